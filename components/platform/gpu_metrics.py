"""GpuMetrics: NVIDIA's DCGM exporter on every NVIDIA GPU node, scraped by the stack's Prometheus.

Installed from NVIDIA's own chart (the repository's `deployment/` folder), so its DaemonSet,
Service, ServiceMonitor, counters and probes follow upstream's releases; the values below are
what the platform changes. The exporter asks for no `nvidia.com/gpu` (it would take a GPU away
from the model servers): the image sets NVIDIA_VISIBLE_DEVICES=all and the node's default
container runtime is NVIDIA's (the EKS AL2023 NVIDIA AMI's nodeadm makes it so), which mounts
every GPU into the container. It lives outside the mesh: Prometheus, whose sidecar captures none
of its outbound traffic, scrapes it in plain HTTP, and a NetworkPolicy admits only Prometheus's
pods."""

from __future__ import annotations

from typing import Any, Optional, Sequence, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from components.cluster.accelerators import Accelerator
from components.core.chart_source import release_source
from components.core.pod_security import pod_security_labels
from components.core.trust import network_rule
from components.platform.monitoring import PROMETHEUS

CHART_REPO = "https://nvidia.github.io/dcgm-exporter/helm-charts"
CHART = "dcgm-exporter"
CHART_VERSION = "4.8.2"
# The exporter's own release tag (DCGM 4.5.3, exporter 4.8.2): the chart's default image at that
# version, so it follows the chart. Its repository's tag of the same name holds the Grafana
# dashboard for it.
RELEASE = "4.5.3-4.8.2"
IMAGE = f"nvcr.io/nvidia/k8s/dcgm-exporter:{RELEASE}-distroless"
NAMESPACE = "dcgm-exporter"
# The chart names its objects after the release. Not "dcgm-exporter": the objects an earlier
# version of this program wrote by hand had that name, and Helm refuses to install over objects
# it does not own; under another name the release comes up beside them before they are deleted.
HELM_RELEASE = "nvidia-dcgm-exporter"
# The chart's selector labels (name, instance): what the NetworkPolicy selects.
POD_LABELS = {"app.kubernetes.io/name": CHART, "app.kubernetes.io/instance": HELM_RELEASE}
# The chart's Service and container port (named "metrics"), the exporter's listen address.
PORT = 9400
PORT_NAME = "metrics"
METRICS_PATH = "/metrics"
SCRAPE_INTERVAL = "15s"
RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "200m", "memory": "512Mi"}}
# Root with SYS_ADMIN, nothing else (the chart's default, pinned here as the platform's
# exception): DCGM's profiling fields (DCGM_FI_PROF_*, tensor and memory activity: the real
# saturation signals of LLM serving) need it, and the kubelet's root-owned pod-resources socket
# refuses a non-root client. The hostPath already takes the namespace past baseline.
SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": False,
    "runAsUser": 0,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]},
}


class GpuMetricsArgs(TypedDict):
    accelerator: Accelerator
    network_policies: bool
    # The monitoring release: the ServiceMonitor CRD comes with it.
    crds_ready: Sequence[pulumi.Resource]


def chart_values(accel: Accelerator) -> dict:
    return {
        # Only the GPU nodes, whose taint it tolerates: the facts the device plugin uses (they
        # replace the chart's toleration of control-plane nodes).
        "nodeSelector": dict(accel.node_selector),
        "tolerations": [dict(t) for t in accel.tolerations],
        # Not the chart's system-node-critical: on a full GPU node a metrics exporter must wait,
        # never preempt the model server.
        "priorityClassName": "",
        "podSecurityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "securityContext": {**SECURITY_CONTEXT, "capabilities": {
            k: list(v) for k, v in SECURITY_CONTEXT["capabilities"].items()}},
        "resources": {k: dict(v) for k, v in RESOURCES.items()},
        # Outside the mesh: plain HTTP (the chart's ServiceMonitor names no scheme or TLS). The
        # exporter labels a GPU's series with the `namespace`, `pod` and `container` holding it,
        # the names Prometheus gives the target's own (the exporter's pod): without honorLabels
        # (the chart's default is false) those become exported_namespace and so on.
        "serviceMonitor": {"enabled": True, "interval": SCRAPE_INTERVAL, "honorLabels": True},
    }


def policy_specs() -> dict[str, dict]:
    """Default-deny ingress; Prometheus's pods alone reach the exporter, on its port alone."""
    return {
        "default-deny-ingress": {"podSelector": {}, "policyTypes": ["Ingress"]},
        "allow-prometheus": {
            "podSelector": {"matchLabels": dict(POD_LABELS)},
            "policyTypes": ["Ingress"],
            "ingress": [network_rule([PROMETHEUS], [PORT])],
        },
    }


class GpuMetrics(pulumi.ComponentResource):
    release: k8s.helm.v3.Release

    def __init__(self, name: str, args: GpuMetricsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:GpuMetrics", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # hostPath, root and SYS_ADMIN: beyond baseline, so privileged (warned at restricted).
        namespace = k8s.core.v1.Namespace(
            f"{name}-ns", metadata={"name": NAMESPACE, "labels": pod_security_labels("privileged")}, opts=child)
        ns = namespace.metadata.name
        # The chart's ServiceMonitor needs the monitoring release's CRD.
        self.release = k8s.helm.v3.Release(
            f"{name}-exporter", name=HELM_RELEASE, **release_source(CHART, CHART_VERSION, CHART_REPO),
            namespace=ns, values=chart_values(args["accelerator"]),
            # GPU nodes may scale from zero: the DaemonSet is ready with no pods.
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args["crds_ready"])))
        if args["network_policies"]:
            for policy, spec in policy_specs().items():
                k8s.networking.v1.NetworkPolicy(
                    f"{name}-{policy}", metadata={"name": policy, "namespace": ns}, spec=spec, opts=child)
        self.register_outputs({"namespace": ns, "chartVersion": CHART_VERSION})
