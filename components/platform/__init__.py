"""The platform layer: what every workload of the stack relies on — the mesh (Istio), GitOps
(Argo CD, and the Pulumi Kubernetes Operator when the cluster pulls), metrics (Prometheus,
Grafana, GPU metrics) and the stack's API keys."""

from components.platform.api_keys import ApiKeys, ApiKeysArgs
from components.platform.gitops import App, GitOpsController, GitOpsControllerArgs
from components.platform.gpu_metrics import GpuMetrics, GpuMetricsArgs
from components.platform.mesh import Mesh, MeshArgs
from components.platform.monitoring import Monitoring, MonitoringArgs
from components.platform.pulumi_operator import PulumiOperator, PulumiOperatorArgs

__all__ = [
    "ApiKeys", "ApiKeysArgs", "App", "GitOpsController", "GitOpsControllerArgs", "GpuMetrics", "GpuMetricsArgs",
    "Mesh", "MeshArgs", "Monitoring", "MonitoringArgs", "PulumiOperator", "PulumiOperatorArgs",
]
