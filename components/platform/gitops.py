"""GitOpsController: Argo CD from its Helm chart and one Argo CD Application per app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from components.core.chart_source import release_source

ARGO_REPO = "https://argoproj.github.io/argo-helm"
ARGOCD_NS = "argocd"
IN_CLUSTER = "https://kubernetes.default.svc"


@dataclass(frozen=True)
class App:
    """A Helm chart Argo CD keeps in sync in `namespace`."""

    name: str
    # Created here unless `create_namespace` is False (then it already exists, e.g. the mesh's).
    namespace: pulumi.Input[str]
    repo_url: str
    chart: str
    target_revision: str
    values: dict[str, Any] = field(default_factory=dict)
    # Secrets created in the app's namespace before it syncs, name -> {key: value}; the
    # values reference them by name, so no credential is written into the Application.
    secrets: dict[str, dict[str, pulumi.Input[str]]] = field(default_factory=dict)
    create_namespace: bool = True


class GitOpsControllerArgs(TypedDict):
    chart_version: str
    apps: Sequence[App]


def application_spec(app: App, namespace: pulumi.Input[str]) -> dict:
    return {
        "project": "default",
        "source": {
            "repoURL": app.repo_url,
            "chart": app.chart,
            "targetRevision": app.target_revision,
            "helm": {"releaseName": app.name, "valuesObject": app.values},
        },
        "destination": {"server": IN_CLUSTER, "namespace": namespace},
        "syncPolicy": {
            "automated": {"prune": True, "selfHeal": True},
            "retry": {"limit": 10, "backoff": {"duration": "10s", "factor": 2, "maxDuration": "5m"}},
        },
    }


class GitOpsController(pulumi.ComponentResource):
    release: k8s.helm.v3.Release
    applications: dict[str, k8s.apiextensions.CustomResource]

    def __init__(self, name: str, args: GitOpsControllerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:GitOpsController", name, None, opts)

        self.release = k8s.helm.v3.Release(
            f"{name}-argocd",
            name="argocd",
            **release_source("argo-cd", args["chart_version"], ARGO_REPO),
            namespace=ARGOCD_NS,
            create_namespace=True,
            # TLS ends at the mesh ingress; dex is unused without SSO.
            values={"configs": {"params": {"server.insecure": True}}, "dex": {"enabled": False}},
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.applications = {}
        for app in args["apps"]:
            namespace = app.namespace
            if app.create_namespace:
                # Pulumi owns the target namespace so its labels are set before Argo CD syncs.
                namespace = k8s.core.v1.Namespace(
                    f"{name}-ns-{app.name}",
                    metadata={"name": app.namespace},
                    opts=pulumi.ResourceOptions(parent=self),
                ).metadata.name
            secrets = [
                k8s.core.v1.Secret(
                    f"{name}-secret-{secret_name}",
                    metadata={"name": secret_name, "namespace": namespace},
                    string_data={k: pulumi.Output.secret(v) for k, v in data.items()},
                    opts=pulumi.ResourceOptions(parent=self),
                )
                for secret_name, data in app.secrets.items()
            ]
            self.applications[app.name] = k8s.apiextensions.CustomResource(
                f"{name}-app-{app.name}",
                api_version="argoproj.io/v1alpha1",
                kind="Application",
                metadata={
                    "name": app.name,
                    "namespace": ARGOCD_NS,
                    # Deleting the Application deletes what it deployed.
                    "finalizers": ["resources-finalizer.argocd.argoproj.io"],
                },
                spec=application_spec(app, namespace),
                # The Application CRD comes with the Argo CD release.
                opts=pulumi.ResourceOptions(
                    parent=self, depends_on=[self.release, *secrets]
                ),
            )
        self.register_outputs({"applications": list(self.applications)})
