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
OPERATOR = {"enabled": True, "repository": "https://github.com/acme/llm-platform.git", "backend": "s3://acme-state",
            "passphrase": {"name": "pulumi-passphrase", "key": "passphrase"},
            "workspaceAnnotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/llm-platform"}}


@pytest.fixture(scope="module")
def recorded():
    return harness.run("eks", {"llm-platform:gitops": {"pulumiOperator": OPERATOR}})


def test_the_operator_runs_this_program_on_this_stack(recorded):
    release = recorded.one("kubernetes:helm.sh/v3:Release", "pulumi-operator-release").inputs
    assert release["chart"] == "oci://ghcr.io/pulumi/helm-charts/pulumi-kubernetes-operator"
    assert release["version"] == "2.9.0" and release["namespace"] == pulumi_operator.NAMESPACE
    stack = recorded.one(STACK)
    spec = stack.inputs["spec"]
    assert spec["stack"] == "organization/llm-platform/eks" and spec["projectRepo"] == OPERATOR["repository"]
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


@pytest.mark.parametrize("stack, operator, expected", [
    ("local", OPERATOR, "Pulumi.local.yaml: llm-platform:gitops.pulumiOperator.enabled: the local stack starts "
                       "minikube on the laptop"),
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
