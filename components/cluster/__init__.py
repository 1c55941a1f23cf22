"""The cluster layer: the Kubernetes cluster of each kind (minikube, EKS, GKE, an existing
one), its accelerator as the scheduler sees it, and what every cluster runs beside it (device
plugin, metrics-server, GPU node autoscaler). `Cluster` publishes the facts the rest reads."""

from components.cluster.accelerators import Accelerator
from components.cluster.cluster import Cluster, ClusterArgs
from components.cluster.device_plugin import GpuDevicePlugin, GpuDevicePluginArgs
from components.cluster.metrics_server import MetricsServer, MetricsServerArgs
from components.cluster.node_autoscaler import GpuNodeAutoscaler, GpuNodeAutoscalerArgs

__all__ = [
    "Accelerator", "Cluster", "ClusterArgs", "GpuDevicePlugin", "GpuDevicePluginArgs", "GpuNodeAutoscaler",
    "GpuNodeAutoscalerArgs", "MetricsServer", "MetricsServerArgs",
]
