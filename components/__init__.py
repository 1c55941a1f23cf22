"""Reusable components of the llm-platform program."""

from .api_keys import ApiKeys, ApiKeysArgs
from .autoscaling import PodAutoscaling, PodAutoscalingArgs
from .cluster import Cluster, ClusterArgs
from .device_plugin import GpuDevicePlugin, GpuDevicePluginArgs
from .front_door import FrontDoor, FrontDoorArgs
from .gateway import Backend, Gateway, GatewayArgs
from .gitops import App, GitOpsController, GitOpsControllerArgs
from .llm_server import LlmServer, LlmServerArgs
from .mesh import Mesh, MeshArgs
from .metrics_server import MetricsServer, MetricsServerArgs
from .monitoring import Monitoring, MonitoringArgs
from .node_autoscaler import GpuNodeAutoscaler, GpuNodeAutoscalerArgs

__all__ = [
    "ApiKeys", "ApiKeysArgs", "App", "Backend", "Cluster", "ClusterArgs", "FrontDoor", "FrontDoorArgs", "Gateway", "GatewayArgs", "GitOpsController",
    "GitOpsControllerArgs", "GpuDevicePlugin", "GpuDevicePluginArgs", "LlmServer", "LlmServerArgs",
    "Mesh", "MeshArgs", "MetricsServer", "MetricsServerArgs", "Monitoring", "MonitoringArgs", "PodAutoscaling", "PodAutoscalingArgs",
    "GpuNodeAutoscaler", "GpuNodeAutoscalerArgs",
]
