"""PulumiOperator: the Pulumi Kubernetes Operator from its Helm chart, and a `Stack` object that has
it run this program, on this stack, from the repository's branch: the cluster pulls each merge
instead of CI pushing it (both may run; Pulumi's lock on the stack keeps them apart)."""

from __future__ import annotations

import re
from typing import Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from components.config import PulumiOperatorConfig
from components.core.chart_source import release_source
from components.core.names import IN_WORKSPACE_ENV, in_workspace

CHART = "pulumi-kubernetes-operator"
CHART_REPO = "oci://ghcr.io/pulumi/helm-charts"
NAMESPACE = "pulumi-kubernetes-operator"
# The identity the operator's workspace pod runs this program as.
WORKSPACE_ACCOUNT = "llm-platform-workspace"
STACK_API = "pulumi.com/v1"
# The workspace's image: the Pulumi CLI this program is tested with (the operator's default floats
# on `latest`), with Python and the clouds' CLIs the eks and gke kubeconfigs call.
WORKSPACE_IMAGE = "pulumi/pulumi:3.274.1-nonroot"
# This program, its providers and its charts' renders take gigabytes; the operator's defaults
# (64Mi, no limit) would be first to go when the node runs short, mid-update.
WORKSPACE_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}


class PulumiOperatorArgs(TypedDict):
    config: PulumiOperatorConfig
    # The stack as the backend names it: <organization>/<project>/<stack>.
    stack: str


def object_name(stack: str) -> str:
    """The Stack object's name: the stack's own name as a DNS label."""
    return re.sub(r"[^a-z0-9-]+", "-", stack.rsplit("/", 1)[-1].lower()).strip("-")[:63] or "stack"


def stack_spec(cfg: PulumiOperatorConfig, stack: str) -> dict:
    """The `Stack` object's spec: the repository's branch, this stack, its backend and secrets."""
    assert cfg.repository and cfg.backend  # the config requires both when the operator is on
    env: dict[str, dict] = {}
    if cfg.passphrase:
        env["PULUMI_CONFIG_PASSPHRASE"] = {"type": "Secret", "secret": cfg.passphrase.model_dump()}
    if cfg.access_token:
        env["PULUMI_ACCESS_TOKEN"] = {"type": "Secret", "secret": cfg.access_token.model_dump()}
    return {
        "stack": stack,
        "projectRepo": cfg.repository,
        "branch": cfg.branch,
        **({"repoDir": cfg.repo_dir} if cfg.repo_dir else {}),
        **({"gitAuthSecret": cfg.git_auth_secret} if cfg.git_auth_secret else {}),
        "backend": cfg.backend,
        **({"envRefs": env} if env else {}),
        "serviceAccountName": WORKSPACE_ACCOUNT,
        # The stack exists already (CI's first `up` made it): never create another by a typo.
        "useLocalStackOnly": True,
        # Deleting the Stack object (turning the operator off) leaves the platform running.
        "destroyOnFinalize": False,
        "resyncFrequencySeconds": cfg.resync_seconds,
        "workspaceTemplate": {"spec": {
            "image": WORKSPACE_IMAGE,
            "resources": WORKSPACE_RESOURCES,
            # The program knows it runs inside the cluster (components/core/names.py).
            "env": [{"name": IN_WORKSPACE_ENV, "value": "true"}],
        }},
    }


class PulumiOperator(pulumi.ComponentResource):
    release: k8s.helm.v3.Release
    stack: k8s.apiextensions.CustomResource

    def __init__(self, name: str, args: PulumiOperatorArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:PulumiOperator", name, None, opts)
        cfg = args["config"]
        child = pulumi.ResourceOptions(parent=self)
        # Run by the operator itself, the program leaves the operator's release as it is: a new
        # chart would roll the operator's pod, which cancels the very update that rolls it. A new
        # chartVersion takes effect from the next `up` outside the cluster.
        self.release = k8s.helm.v3.Release(
            f"{name}-release",
            name=CHART,
            **release_source(CHART, cfg.chart_version, CHART_REPO),
            namespace=NAMESPACE,
            create_namespace=True,
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=(
                ["chart", "version", "values", "repositoryOpts"] if in_workspace() else None)),
        )
        account = k8s.core.v1.ServiceAccount(
            f"{name}-workspace",
            metadata={"name": WORKSPACE_ACCOUNT, "namespace": NAMESPACE,
                      "annotations": dict(cfg.workspace_annotations)},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.release]),
        )
        # The program installs CRDs, webhooks, ClusterRoles and namespaces: nothing narrower than
        # cluster-admin lets it run, as nothing narrower lets CI's `up` run.
        binding = k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-workspace-admin",
            metadata={"name": WORKSPACE_ACCOUNT},
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            subjects=[{"kind": "ServiceAccount", "name": WORKSPACE_ACCOUNT, "namespace": NAMESPACE}],
            opts=child,
        )
        # The Stack CRD comes with the release.
        self.stack = k8s.apiextensions.CustomResource(
            f"{name}-stack",
            api_version=STACK_API,
            kind="Stack",
            metadata={"name": object_name(args["stack"]), "namespace": NAMESPACE},
            spec=stack_spec(cfg, args["stack"]),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.release, account, binding]),
        )
        self.register_outputs({"stack": object_name(args["stack"])})
