"""Reusable components of the llm-platform program, by layer; each package depends only on
those listed before it:

    core      names, identities, policy builders, chart sources (imports nothing above it)
    config    the stack's configuration (pydantic models, one-line errors)
    cluster   the cluster, its accelerator, device plugin, metrics-server, node autoscaler
    platform  mesh, GitOps, monitoring, API keys
    serving   model servers, their namespace and autoscaling   } neither imports the other
    edge      front door, its database, gateway, UI            }
"""

from components.cluster import (
    Cluster,
    ClusterArgs,
    GpuDevicePlugin,
    GpuDevicePluginArgs,
    GpuNodeAutoscaler,
    GpuNodeAutoscalerArgs,
    MetricsServer,
    MetricsServerArgs,
)
from components.edge import (
    Backend,
    FrontDoor,
    FrontDoorArgs,
    Gateway,
    GatewayArgs,
    KeysDatabase,
    KeysDatabaseArgs,
    UiAdmin,
    UiAdminArgs,
)
from components.platform import (
    ApiKeys,
    ApiKeysArgs,
    App,
    GitOpsController,
    GitOpsControllerArgs,
    GpuMetrics,
    GpuMetricsArgs,
    Mesh,
    MeshArgs,
    Monitoring,
    MonitoringArgs,
)
from components.serving import (
    LlamaRouter,
    LlamaRouterArgs,
    LlmServer,
    LlmServerArgs,
    ModelNamespace,
    ModelNamespaceArgs,
    PodAutoscaling,
    PodAutoscalingArgs,
    ScaledServer,
)

__all__ = [
    "ApiKeys", "ApiKeysArgs", "App", "Backend", "Cluster", "ClusterArgs", "FrontDoor", "FrontDoorArgs", "Gateway",
    "GatewayArgs", "GitOpsController", "GitOpsControllerArgs", "GpuDevicePlugin", "GpuDevicePluginArgs", "GpuMetrics",
    "GpuMetricsArgs", "GpuNodeAutoscaler", "GpuNodeAutoscalerArgs", "KeysDatabase", "KeysDatabaseArgs", "LlamaRouter",
    "LlamaRouterArgs", "LlmServer", "LlmServerArgs", "Mesh", "MeshArgs", "MetricsServer", "MetricsServerArgs",
    "ModelNamespace", "ModelNamespaceArgs", "Monitoring", "MonitoringArgs", "PodAutoscaling",
    "PodAutoscalingArgs", "ScaledServer", "UiAdmin", "UiAdminArgs",
]
