"""MetricsServer: the resource metrics API (`metrics.k8s.io`) from the kubernetes-sigs chart, on
clusters that do not serve it themselves. CPU- and memory-based HorizontalPodAutoscalers read
it (the ingress gateway's scales on CPU): without it such an HPA keeps its minimum and reports
`FailedGetResourceMetric`. EKS runs no metrics-server; GKE runs its own, and minikube's addon is
enabled with the cluster (`clusters/minikube.py`): there nothing is installed, as a second
registration of the same APIService would collide with theirs."""

from __future__ import annotations

from typing import Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from components.core.chart_source import release_source

REPO = "https://kubernetes-sigs.github.io/metrics-server/"
CHART = "metrics-server"
CHART_VERSION = "3.13.1"
RELEASE = "metrics-server"
# Beside the cluster's own add-ons, as upstream installs it.
NAMESPACE = "kube-system"
# The API it registers with the aggregator: what an HPA's Resource metrics are read from.
API_GROUP = "metrics.k8s.io"
API_SERVICE = f"v1beta1.{API_GROUP}"
# The chart's requests (upstream sizes them for about 100 nodes), with limits so one runaway pod
# cannot starve the system nodes.
RESOURCES = {"requests": {"cpu": "100m", "memory": "200Mi"}, "limits": {"cpu": "500m", "memory": "400Mi"}}


class MetricsServerArgs(TypedDict):
    """Nothing to choose: the release runs as the platform pins it."""


# A uid no host account has (the chart's 1000 may be one): it writes only its emptyDir /tmp.
RUN_AS = 65534


def values() -> dict:
    return {
        # Merged over the chart's defaults: non-root, read-only root, every capability dropped,
        # RuntimeDefault seccomp for the container (here for the whole pod too).
        "securityContext": {"runAsUser": RUN_AS},
        "podSecurityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "resources": {k: dict(v) for k, v in RESOURCES.items()},
        # Otherwise the chart's: system-cluster-critical, kubelets reached by their node IP with
        # verified certificates (the kubelets' serving certificates are signed by the cluster's
        # CA on EKS). It keeps its service account token: it authenticates every request the
        # API server passes on, and reads nodes and pods.
    }


class MetricsServer(pulumi.ComponentResource):
    release: k8s.helm.v3.Release

    def __init__(self, name: str, args: MetricsServerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:MetricsServer", name, None, opts)
        self.release = k8s.helm.v3.Release(
            f"{name}-release", name=RELEASE, **release_source(CHART, CHART_VERSION, REPO), namespace=NAMESPACE,
            values=values(),
            opts=pulumi.ResourceOptions(parent=self))
        self.register_outputs({"apiService": API_SERVICE, "chartVersion": CHART_VERSION})
