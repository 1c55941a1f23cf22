"""GpuMetrics: NVIDIA's DCGM exporter on every NVIDIA GPU node, scraped by the stack's Prometheus.

No chart for it is vendored: the DaemonSet, Service, ServiceMonitor and namespace are written here
from the exporter's documented settings. The exporter asks for no `nvidia.com/gpu` (it would take a
GPU away from the model servers): the image sets NVIDIA_VISIBLE_DEVICES=all and the node's default
container runtime is NVIDIA's (the EKS AL2023 NVIDIA AMI's nodeadm makes it so), which mounts every
GPU into the container. It lives outside the mesh: Prometheus, whose sidecar captures none of its
outbound traffic, scrapes it in plain HTTP, and a NetworkPolicy admits only Prometheus's pods."""

from __future__ import annotations

from typing import Optional, Sequence, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from .accelerators import Accelerator
from .config import Image
from .mesh import pod_security_labels
from .model_namespace import NAMESPACE_LABEL
from .monitoring import NAMESPACE as MONITORING_NAMESPACE, PROMETHEUS_POD_LABELS

# The exporter's own release tag (DCGM 4.5.3, exporter 4.8.2): the chart's default image. Its
# repository's tag of the same name holds the Grafana dashboard for it.
RELEASE = "4.5.3-4.8.2"
IMAGE: Image = f"nvcr.io/nvidia/k8s/dcgm-exporter:{RELEASE}-distroless"
NAME = "dcgm-exporter"
NAMESPACE = "dcgm-exporter"
PORT = 9400
PORT_NAME = "metrics"
METRICS_PATH = "/metrics"
HEALTH_PATH = "/health"
# The kubelet's pod-resources socket: which pod holds which GPU, for the series' pod labels.
POD_RESOURCES_DIR = "/var/lib/kubelet/pod-resources"
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "llm-platform"}
SCRAPE_INTERVAL = "15s"
RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "200m", "memory": "512Mi"}}
# Root with SYS_ADMIN, nothing else: DCGM's profiling fields (DCGM_FI_PROF_*, tensor and memory
# activity: the real saturation signals of LLM serving) need it, and the kubelet's root-owned
# socket refuses a non-root client. The hostPath already takes the namespace past baseline.
SECURITY_CONTEXT = {
    "runAsNonRoot": False,
    "runAsUser": 0,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]},
}


class GpuMetricsArgs(TypedDict):
    provider: k8s.Provider
    accelerator: Accelerator
    network_policies: bool
    # The monitoring release: the ServiceMonitor CRD comes with it.
    crds_ready: Sequence[pulumi.Resource]


def daemon_set_spec(accel: Accelerator) -> dict:
    probe = {"httpGet": {"path": HEALTH_PATH, "port": PORT_NAME}}
    return {
        "selector": {"matchLabels": dict(LABELS)},
        "updateStrategy": {"type": "RollingUpdate"},
        "template": {
            "metadata": {"labels": dict(LABELS)},
            "spec": {
                # Only the GPU nodes, whose taint it tolerates: the facts the device plugin uses.
                "nodeSelector": dict(accel.node_selector),
                "tolerations": [dict(t) for t in accel.tolerations],
                # It reads the kubelet's socket, never the API server.
                "automountServiceAccountToken": False,
                "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": NAME,
                    "image": IMAGE,
                    "env": [
                        {"name": "DCGM_EXPORTER_LISTEN", "value": f":{PORT}"},
                        {"name": "DCGM_EXPORTER_KUBERNETES", "value": "true"},
                        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    ],
                    "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
                    "livenessProbe": {**probe, "initialDelaySeconds": 45, "periodSeconds": 10},
                    "readinessProbe": {**probe, "initialDelaySeconds": 45},
                    "resources": {k: dict(v) for k, v in RESOURCES.items()},
                    "securityContext": {**SECURITY_CONTEXT, "capabilities": {
                        k: list(v) for k, v in SECURITY_CONTEXT["capabilities"].items()}},
                    "volumeMounts": [{"name": "pod-resources", "mountPath": POD_RESOURCES_DIR, "readOnly": True}],
                }],
                "volumes": [{"name": "pod-resources", "hostPath": {"path": POD_RESOURCES_DIR}}],
            },
        },
    }


def service_monitor_spec() -> dict:
    # Outside the mesh: plain HTTP, no mesh certificate. The exporter labels a GPU's series with
    # the `namespace`, `pod` and `container` holding it, the names Prometheus gives the target's
    # own (the exporter's pod): without honorLabels those become exported_namespace and so on.
    return {
        "selector": {"matchLabels": dict(LABELS)},
        "endpoints": [{"port": PORT_NAME, "path": METRICS_PATH, "scheme": "http", "interval": SCRAPE_INTERVAL,
                       "honorLabels": True}],
    }


def policy_specs() -> dict[str, dict]:
    """Default-deny ingress; Prometheus's pods alone reach the exporter, on its port alone."""
    return {
        "default-deny-ingress": {"podSelector": {}, "policyTypes": ["Ingress"]},
        "allow-prometheus": {
            "podSelector": {"matchLabels": dict(LABELS)},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: MONITORING_NAMESPACE}},
                          "podSelector": {"matchLabels": dict(PROMETHEUS_POD_LABELS)}}],
                "ports": [{"protocol": "TCP", "port": PORT}],
            }],
        },
    }


class GpuMetrics(pulumi.ComponentResource):
    def __init__(self, name: str, args: GpuMetricsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:GpuMetrics", name, None, opts)
        provider = args["provider"]
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        # hostPath, root and SYS_ADMIN: beyond baseline, so privileged (warned at restricted).
        namespace = k8s.core.v1.Namespace(
            f"{name}-ns", metadata={"name": NAMESPACE, "labels": pod_security_labels("privileged")}, opts=child)
        ns = namespace.metadata.name
        self.daemon_set = k8s.apps.v1.DaemonSet(
            f"{name}-daemonset", metadata={"name": NAME, "namespace": ns, "labels": dict(LABELS)},
            spec=daemon_set_spec(args["accelerator"]), opts=child)
        self.service = k8s.core.v1.Service(
            f"{name}-service", metadata={"name": NAME, "namespace": ns, "labels": dict(LABELS)},
            spec={"selector": dict(LABELS),
                  "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}]},
            opts=child)
        k8s.apiextensions.CustomResource(
            f"{name}-servicemonitor", api_version="monitoring.coreos.com/v1", kind="ServiceMonitor",
            metadata={"name": NAME, "namespace": ns}, spec=service_monitor_spec(),
            opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=list(args["crds_ready"])))
        if args["network_policies"]:
            for policy, spec in policy_specs().items():
                k8s.networking.v1.NetworkPolicy(
                    f"{name}-{policy}", metadata={"name": policy, "namespace": ns}, spec=spec, opts=child)
        self.register_outputs({"namespace": ns, "image": IMAGE})
