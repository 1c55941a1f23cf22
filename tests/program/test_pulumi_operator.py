"""The Pulumi Kubernetes Operator, when the cluster is to pull: its release from the pinned chart,
an identity for its workspace, and a `Stack` of this program on this stack; the config refuses what
cannot work in one line. (The Stack against the operator's CRD, on a real API server:
tests/parts/test_pulumi_operator.py.)"""

from __future__ import annotations

import pulumi
import pytest

from components.platform import pulumi_operator
from tools import mock_engine as harness

STACK = "kubernetes:pulumi.com/v1:Stack"
ADMINS = ["arn:aws:iam::123456789012:role/ci", "arn:aws:iam::123456789012:role/llm-platform-workspace"]
OPERATOR = {"enabled": True, "repository": "https://github.com/acme/llm-platform.git", "backend": "s3://acme-state",
            "passphrase": {"name": "pulumi-passphrase", "key": "passphrase"}, "workspaceRoleArn": ADMINS[1],
            "workspaceAnnotations": {"example.com/identity": "llm-platform"}}


@pytest.fixture(scope="module")
def recorded():
    return harness.run("eks", {"llm-platform:gitops": {"pulumiOperator": OPERATOR}, "llm-platform:cluster": {
        **harness.stack_config("eks")["llm-platform:cluster"], "adminRoles": ADMINS}})


def test_the_operator_runs_this_program_on_this_stack(recorded):
    release = recorded.one("kubernetes:helm.sh/v3:Release", "pulumi-operator-release").inputs
    assert release["chart"] == "oci://ghcr.io/pulumi/helm-charts/pulumi-kubernetes-operator"
    assert release["version"] == "2.9.0" and release["namespace"] == pulumi_operator.NAMESPACE
    stack = recorded.one(STACK)
    spec = stack.inputs["spec"]
    assert spec["stack"] == "eks" and spec["projectRepo"] == OPERATOR["repository"]
    # The tested CLI in the workspace, with room to run the program, knowing where it runs.
    workspace = spec["workspaceTemplate"]["spec"]
    assert workspace["image"] == "pulumi/pulumi:3.274.1-nonroot"
    assert workspace["resources"]["requests"]["memory"] == "2Gi"
    assert {"name": "LLM_PLATFORM_IN_WORKSPACE", "value": "true"} in workspace["env"]
    assert spec["backend"] == "s3://acme-state" and spec["useLocalStackOnly"] is True
    assert spec["destroyOnFinalize"] is False
    # The passphrase by reference to a Secret the operator's users create: never a value.
    assert spec["envRefs"] == {"PULUMI_CONFIG_PASSPHRASE": {"type": "Secret", "secret": OPERATOR["passphrase"]}}
    account = recorded.one("kubernetes:core/v1:ServiceAccount", "pulumi-operator-workspace").inputs["metadata"]
    assert account["annotations"] == OPERATOR["workspaceAnnotations"]
    assert spec["serviceAccountName"] == account["name"]
    # After its CRD (the release) and its identity.
    assert {d.rsplit("::", 1)[-1] for d in stack.dependencies} >= {
        "pulumi-operator-release", "pulumi-operator-workspace", "pulumi-operator-workspace-admin"}


def test_off_by_default():
    assert not harness.run("eks").of_type(STACK)


def test_on_eks_the_named_roles_are_the_admins_whoever_runs_it(recorded):
    """CI's and the workspace's runs would otherwise each make only their own caller the admin."""
    admins = {r.inputs["principalArn"] for r in recorded.of_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation")
              if r.inputs["policyArn"].endswith("/AmazonEKSClusterAdminPolicy")}
    assert admins == set(ADMINS)
    assert not [r for r in recorded.of_type("aws:eks/accessEntry:AccessEntry") if r.name == "cluster-deployer"]
    # ...and the workspace's service account acts as its role, by EKS Pod Identity.
    (identity,) = [r for r in recorded.of_type("aws:eks/podIdentityAssociation:PodIdentityAssociation")
                   if r.inputs["namespace"] == pulumi_operator.NAMESPACE]
    assert (identity.inputs["namespace"], identity.inputs["serviceAccount"], identity.inputs["roleArn"]) == (
        pulumi_operator.NAMESPACE, pulumi_operator.WORKSPACE_ACCOUNT, ADMINS[1])


def test_in_its_own_workspace_the_program_leaves_the_operator_as_it_is(monkeypatch):
    """A new chart would roll the operator's pod and cancel the update that rolls it; turning it
    off would wait on the Stack's finalizer, which the operator holds for that same update."""
    monkeypatch.setenv("LLM_PLATFORM_IN_WORKSPACE", "true")
    cluster = {**harness.stack_config("eks")["llm-platform:cluster"], "adminRoles": ADMINS}
    rec = harness.run("eks", {"llm-platform:gitops": {"pulumiOperator": OPERATOR}, "llm-platform:cluster": cluster})
    release = rec.one("kubernetes:helm.sh/v3:Release", "pulumi-operator-release")
    assert set(release.ignore_changes or ()) >= {"chart", "version", "values"}
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("eks", {"llm-platform:gitops": {"pulumiOperator": {**OPERATOR, "enabled": False}},
                            "llm-platform:cluster": cluster})
    assert str(info.value.error).startswith("Pulumi.eks.yaml: llm-platform:gitops.pulumiOperator.enabled: the "
                                            "operator cannot turn itself off from its own workspace")


@pytest.mark.parametrize("stack, operator, expected", [
    ("local", OPERATOR, "Pulumi.local.yaml: llm-platform:gitops.pulumiOperator.enabled: the local stack starts "
                       "minikube on the laptop"),
    ("eks", OPERATOR, "Pulumi.eks.yaml: llm-platform:cluster.adminRoles: required with gitops.pulumiOperator on eks"),
    ("gke", OPERATOR, "Pulumi.gke.yaml: llm-platform:gitops.pulumiOperator.workspaceRoleArn: EKS Pod Identity is "
                      "for eks clusters"),
    ("eks", {**OPERATOR, "backend": "file://~"}, "Pulumi.eks.yaml: llm-platform:gitops.pulumiOperator.backend: "
                                                 "expected a backend the cluster can reach"),
    ("eks", {k: v for k, v in OPERATOR.items() if k != "repository"},
     "Pulumi.eks.yaml: llm-platform:gitops.pulumiOperator.repository: required with enabled: true"),
])
def test_what_cannot_work_is_refused_in_one_line(stack, operator, expected):
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run(stack, {"llm-platform:gitops": {"pulumiOperator": operator}})
    assert isinstance(info.value.error, pulumi.RunError)
    message = str(info.value.error)
    assert message.startswith(expected) and "\n" not in message, message
