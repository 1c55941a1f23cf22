"""Reusable components of the llm-platform program."""

from .api_keys import ApiKeys, ApiKeysArgs
from .cluster import Cluster, ClusterArgs
from .device_plugin import GpuDevicePlugin, GpuDevicePluginArgs
from .gateway import Backend, Gateway, GatewayArgs, ModelRoute
from .gitops import App, GitOpsController, GitOpsControllerArgs
from .llm_server import LlmServer, LlmServerArgs
from .mesh import Mesh, MeshArgs

__all__ = [
    "ApiKeys", "ApiKeysArgs", "App", "Backend", "Cluster", "ClusterArgs", "Gateway", "GatewayArgs", "GitOpsController",
    "GitOpsControllerArgs", "GpuDevicePlugin", "GpuDevicePluginArgs", "LlmServer", "LlmServerArgs",
    "Mesh", "MeshArgs", "ModelRoute",
]
