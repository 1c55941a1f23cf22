"""The whole stack: every section, and the checks across them."""

from __future__ import annotations

import os
from typing import Annotated, Any, Optional

from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from components.config.base import ApiKey, DnsLabel, _master_key, _Model
from components.config.cluster import ClusterConfig
from components.config.models import DEFAULT_MODEL, DEFAULT_VLLM_MODEL, AcceleratorConfig, AnyModel, ServedModel
from components.config.monitoring import MonitoringConfig
from components.config.services import (
    AppConfig,
    FrontDoorConfig,
    GatewayConfig,
    GitOpsConfig,
    LlamaRouterConfig,
    MeshConfig,
    SecurityConfig,
    UiConfig,
)
from components.config.teams import TEAM_MODELS_DIR, TeamConfig
from components.core.hardware import AcceleratorPool
from components.core.names import in_workspace

ACCELERATORS_BY_CLUSTER = {
    "minikube": ("vulkan", "none"),
    # A cluster of your own: CPU-only, a Vulkan device (/dev/dri), or GPU/TPU nodes you describe.
    "existing": ("none", "vulkan", "nvidia", "tpu"),
    "eks": ("nvidia",),
    "gke": ("tpu", "nvidia"),
}
RUNTIMES_BY_ACCELERATOR = {"vulkan": ("llama-cpp",), "none": ("llama-cpp",), "nvidia": ("vllm",), "tpu": ("vllm",)}


# Namespaces the platform's charts and components install into: never a team's.
PLATFORM_NAMESPACES = ("istio-system", "istio-ingress", "argocd", "monitoring", "keda", "kube-system",
                       "kube-public", "kube-node-lease", "default", "dcgm-exporter", "cert-manager",
                       "nvidia-device-plugin", "pulumi-kubernetes-operator")


def replicas_key(model: ServedModel) -> str:
    """The key that sets how many replicas a model may run."""
    return "autoscaling.maxReplicas" if model.autoscaling.enabled else "replicas"


def model_fits(model: ServedModel, accel: str, pool: Optional[AcceleratorPool]) -> Optional[str]:
    """Why `model` cannot run on the accelerator, as "key: reason", or None where it can."""
    if model.runtime not in RUNTIMES_BY_ACCELERATOR[accel]:
        return (f"runtime: on {accel!r} models run with {' or '.join(RUNTIMES_BY_ACCELERATOR[accel])}, "
                f"got {model.runtime!r}")
    per_node = pool.per_node if pool else None
    asked = getattr(model, "accelerators", None)
    if asked and per_node and asked > per_node:
        return f"accelerators: {asked} asked (tensor-parallel size) but a node has only {per_node}"
    if asked and accel == "tpu" and asked != per_node:
        return f"accelerators: a TPU pod takes every chip of its host ({per_node}), got {asked}"
    return None


def _existing_dir(value: str) -> str:
    """a folder that exists"""
    if not os.path.isdir(os.path.expanduser(value)):
        raise ValueError(f"expected a folder of chart archives, {value!r} is not a folder")
    return value


class ChartsConfig(_Model):
    """Where Helm charts come from."""

    archive_dir: Optional[Annotated[str, AfterValidator(_existing_dir)]] = None
    """A folder of `<chart>-<version>.tgz` archives (`helm dependency build`, then `helm package`)
    every Helm release installs from, so no chart is downloaded: for clusters without internet
    access (and the suite's engine tests); a missing archive fails the preview in one line. None:
    each chart's repository. It covers the Helm releases only: images still come from their
    registries, Argo CD's apps (Open WebUI, `apps`) from their chart repositories, and Grafana
    downloads the vLLM and NVIDIA dashboards at start (a failed download fails Grafana); an
    air-gapped cluster also needs mirrors for those."""


def _default_models() -> list[AnyModel]:
    return [DEFAULT_MODEL]


class StackConfig(_Model):
    """Every `llm-platform:<key>` of a stack file."""

    cluster: ClusterConfig
    """Which cluster the stack runs on, chosen by `kind`."""
    accelerator: AcceleratorConfig = AcceleratorConfig()
    """What the models run on. Default: what the cluster kind serves on."""
    models: list[AnyModel] = Field(default_factory=_default_models, min_length=1)
    """The models to serve, each by `runtime`. Default: TinyLlama 1.1B chat Q8_0 on llama.cpp, or
    a small vLLM model (Qwen2.5-1.5B-Instruct) on GPU/TPU clusters."""
    models_namespace: DnsLabel = "models"
    """Namespace of the model servers (sidecar injection on)."""
    mesh: MeshConfig = MeshConfig()
    """Istio."""
    gitops: GitOpsConfig = GitOpsConfig()
    """Argo CD."""
    ui: UiConfig = UiConfig()
    """Open WebUI, the chat UI."""
    apps: list[AppConfig] = []
    """Further charts for Argo CD to deliver."""
    gateway: GatewayConfig = GatewayConfig()
    """The ingress: host name, TLS, the clouds' load balancer."""
    security: SecurityConfig = SecurityConfig()
    """Opt-outs of the secure defaults (see docs/security.md)."""
    front_door: FrontDoorConfig = FrontDoorConfig()
    """The LiteLLM front door (see docs/front-door.md)."""
    llama_router: LlamaRouterConfig = LlamaRouterConfig()
    """llama.cpp router mode: one llama-server serves every GGUF model (`true` in
    `Pulumi.local.yaml`)."""
    monitoring: MonitoringConfig = MonitoringConfig()
    """Prometheus and Grafana."""
    teams: dict[DnsLabel, TeamConfig] = {}
    """Teams that serve models of their own (see docs/teams.md): team name (its folder under
    `teamModelsDir`) → its quota, namespace and owners."""
    team_models_dir: str = TEAM_MODELS_DIR
    """The folder of the teams' model files (`<team>/<model>.yaml`), relative to the project."""
    charts: ChartsConfig = ChartsConfig()
    """Where Helm charts come from."""
    api_key: Optional[Annotated[ApiKey, AfterValidator(_master_key)]] = None
    """The client API key (a Pulumi secret), the front door's master key; generated and kept in
    state when not set. LiteLLM takes only master keys that start with `sk-`. Open WebUI has its
    own key (output `uiApiKey`)."""
    provider_keys: dict[str, str] = {}
    """Keys of the hosted providers (a Pulumi secret): provider entry name → key, e.g.
    `pulumi config set --secret --path 'providerKeys.gpt-mini' sk-...`."""
    ui_admin_password: Optional[str] = None
    """Open WebUI's admin password (a Pulumi secret); generated and kept in state when not set
    (output `uiAdminPassword`)."""
    hf_token: Optional[str] = None
    """Hugging Face token for gated models (a Pulumi secret): `pulumi config set --secret hfToken
    hf_...`; it reaches the pod only through a Kubernetes Secret."""

    # The teams' models, read from their files once the stack file is checked (team_models.py).
    _team_models: list = PrivateAttr(default_factory=list)

    @property
    def team_models(self) -> list:
        """The teams' models (`TeamModel`s), as `load` read them from the teams' folders."""
        return self._team_models

    @model_validator(mode="before")
    @classmethod
    def _no_removed_keys(cls, raw: Any) -> Any:
        """A key that used to exist gets its own answer, not "unknown key"."""
        if isinstance(raw, dict) and "deleteModelCaches" in raw:
            raise ValueError(REMOVED_DELETE_MODEL_CACHES)
        if isinstance(raw, dict) and "uiApiKey" in raw:
            raise ValueError(REMOVED_UI_API_KEY)
        return raw

    @model_validator(mode="before")
    @classmethod
    def _defaults_for_the_cluster(cls, raw: Any) -> Any:
        """Fill in the accelerator and models a cluster kind serves on, when left out."""
        if not isinstance(raw, dict) or not isinstance(raw.get("cluster"), dict):
            return raw
        kind = raw["cluster"].get("kind")
        if not isinstance(kind, str) or kind not in ACCELERATORS_BY_CLUSTER:
            return raw
        raw = dict(raw)
        accel = raw.get("accelerator")
        if not (accel is None or isinstance(accel, dict)):
            return raw
        if accel is None or "kind" not in accel:
            default = ACCELERATORS_BY_CLUSTER[kind][0]
            if kind == "gke" and raw["cluster"].get("gpuPool") and not raw["cluster"].get("tpuPool"):
                default = "nvidia"
            raw["accelerator"] = {**(accel or {}), "kind": default}
        if "models" not in raw and raw["accelerator"].get("kind") in ("nvidia", "tpu"):
            raw["models"] = [DEFAULT_VLLM_MODEL]
        return raw

    @model_validator(mode="after")
    def _fits_the_cluster(self) -> "StackConfig":
        accel = self.accelerator.kind
        if accel not in ACCELERATORS_BY_CLUSTER[self.cluster.kind]:
            allowed = " or ".join(ACCELERATORS_BY_CLUSTER[self.cluster.kind])
            raise ValueError(f"accelerator.kind: {self.cluster.kind} clusters serve on {allowed}, got {accel!r}")
        if self.cluster.kind == "gke" and accel == "tpu" and self.cluster.tpu_pool is None:
            raise ValueError("cluster.tpuPool: required to serve on 'tpu'")
        if self.cluster.kind == "gke" and accel == "nvidia" and self.cluster.gpu_pool is None:
            raise ValueError("cluster.gpuPool: required to serve on 'nvidia'")
        if self.cluster.kind == "existing" and accel in ("nvidia", "tpu") and self.cluster.accelerator_nodes is None:
            raise ValueError(f"cluster.acceleratorNodes: required to serve on {accel!r}: the nodes' labels, "
                             f"taint and units per node")
        if (self.cluster.kind == "existing" and accel == "tpu" and self.cluster.accelerator_nodes
                and self.cluster.accelerator_nodes.device_plugin == "chart"):
            raise ValueError("cluster.acceleratorNodes.devicePlugin: 'chart' installs NVIDIA's plugin; TPU "
                             "nodes advertise google.com/tpu themselves, expected 'managed'")
        pool = self.pool
        for i, m in enumerate(self.models):
            problem = model_fits(m, accel, pool)
            if problem:
                raise ValueError(f"models[{i}].{problem}")
        self._replicas_fit(pool)
        return self

    @model_validator(mode="after")
    def _operator_runs_in_the_cluster(self) -> "StackConfig":
        operator = self.gitops.pulumi_operator
        if operator.enabled and self.cluster.kind == "minikube":
            raise ValueError("gitops.pulumiOperator.enabled: the local stack starts minikube on the laptop, which no "
                             "program inside the cluster can do; run `pulumi up` there instead")
        if operator.enabled and self.cluster.kind == "existing" and self.cluster.models_dir:
            raise ValueError("gitops.pulumiOperator.enabled: cluster.modelsDir fetches model files on the machine "
                             "that runs the program, which in the operator's workspace is a pod; leave it out")
        if in_workspace() and not operator.enabled:
            # The workspace's own update would delete the Stack it runs for, whose finalizer the
            # operator holds until that update ends: it never ends.
            raise ValueError("gitops.pulumiOperator.enabled: the operator cannot turn itself off from its own "
                             "workspace; run `pulumi up` from CI or a laptop to turn it off")
        if operator.enabled and self.cluster.kind == "eks" and not self.cluster.admin_roles:
            raise ValueError("cluster.adminRoles: required with gitops.pulumiOperator on eks (CI's role, your own and "
                             "the workspace's): otherwise each run makes only its own caller the cluster's admin")
        if operator.workspace_role_arn and self.cluster.kind != "eks":
            raise ValueError(f"gitops.pulumiOperator.workspaceRoleArn: EKS Pod Identity is for eks clusters; on "
                             f"{self.cluster.kind} use workspaceAnnotations")
        if (operator.enabled and self.cluster.kind == "eks" and operator.workspace_role_arn
                and operator.workspace_role_arn not in self.cluster.admin_roles):
            raise ValueError("gitops.pulumiOperator.workspaceRoleArn: expected one of cluster.adminRoles (the "
                             "workspace runs the whole program, as CI does)")
        return self

    @model_validator(mode="after")
    def _load_balancer_on_a_cloud(self) -> "StackConfig":
        if self.gateway.load_balancer and self.cluster.kind not in ("eks", "gke"):
            raise ValueError(f"gateway.loadBalancer: only eks and gke create a cloud load balancer; remove the key "
                             f"on a {self.cluster.kind} cluster")
        return self

    @model_validator(mode="after")
    def _router_serves_gguf(self) -> "StackConfig":
        if self.llama_router.enabled and self.accelerator.kind not in ("vulkan", "none"):
            raise ValueError(f"llamaRouter.enabled: router mode serves GGUF files with llama.cpp "
                             f"(accelerator vulkan or none), not on {self.accelerator.kind!r}")
        for i, m in enumerate(self.models):
            if m.autoscaling.enabled and self.llama_router.enabled:
                raise ValueError(f"models[{i}].autoscaling.enabled: in router mode one llama-server serves "
                                 f"every model; autoscale models only with llamaRouter.enabled: false")
            problem = self.autoscaling_problem(m)
            if problem:
                raise ValueError(f"models[{i}].{problem}")
        return self

    def autoscaling_problem(self, model: ServedModel) -> Optional[str]:
        """Why the stack cannot autoscale `model` as it asks, as "key: reason", or None."""
        if model.autoscaling.enabled and not self.monitoring.enabled:
            return ("autoscaling.enabled: KEDA reads the server's queue from the stack's Prometheus; expected "
                    "monitoring.enabled: true")
        if model.autoscaling.scale_to_zero and not self.front_door.metrics:
            return ("autoscaling.scaleToZero: a server at zero replicas is woken by the front door's request "
                    "count; expected frontDoor.metrics: true")
        return None

    @model_validator(mode="after")
    def _providers_have_keys(self) -> "StackConfig":
        if self.front_door.providers and not self.security.api_auth:
            # The front door holds the providers' keys: an open API spends them for whoever
            # reaches the gateway (on eks/gke, the internet).
            raise ValueError("frontDoor.providers: expected security.apiAuth: true (without API keys anyone "
                             "who reaches the gateway would spend the providers' paid keys)")
        names = [m.name for m in self.models]
        for i, p in enumerate(self.front_door.providers):
            if p.name in names:
                raise ValueError(f"frontDoor.providers[{i}].name: {p.name!r} is already a model of the stack")
            names.append(p.name)
            if p.name not in self.provider_keys:
                raise ValueError(f"providerKeys: expected a key for provider {p.name!r} "
                                 f"(`pulumi config set --secret --path providerKeys.{p.name} ...`)")
        return self

    @model_validator(mode="after")
    def _virtual_keys_need_the_master_key(self) -> "StackConfig":
        vk = self.front_door.virtual_keys
        if not vk.enabled:
            return self
        if not self.security.api_auth:
            raise ValueError("frontDoor.virtualKeys.enabled: expected security.apiAuth: true (virtual keys are "
                             "issued with the master key, and an open API has none)")
        meshed = {self.front_door.namespace, self.models_namespace, *([self.ui.namespace] if self.ui.enabled else [])}
        for key in ("namespace", "operatorNamespace"):
            name = vk.namespace if key == "namespace" else vk.operator_namespace
            if name in meshed:
                raise ValueError(f"frontDoor.virtualKeys.{key}: expected a namespace of its own, outside the mesh; "
                                 f"{name!r} is already used")
        return self

    @model_validator(mode="after")
    def _budgets_need_virtual_keys(self) -> "StackConfig":
        for team, t in sorted(self.teams.items()):
            if t.budget and not self.front_door.virtual_keys.enabled:
                raise ValueError(f"teams.{team}.budget: expected frontDoor.virtualKeys.enabled: true (a budget "
                                 f"is kept with the front door's virtual keys, in its database)")
        return self

    @model_validator(mode="after")
    def _team_namespaces_are_their_own(self) -> "StackConfig":
        taken = {self.models_namespace: "modelsNamespace", self.front_door.namespace: "frontDoor.namespace",
                 **({self.ui.namespace: "ui.namespace"} if self.ui.enabled else {}),
                 **({self.front_door.virtual_keys.namespace: "frontDoor.virtualKeys.namespace",
                     self.front_door.virtual_keys.operator_namespace: "frontDoor.virtualKeys.operatorNamespace"}
                    if self.front_door.virtual_keys.enabled else {}),
                 **{ns: "a namespace the platform installs" for ns in PLATFORM_NAMESPACES}}
        for team, t in self.teams.items():
            ns = t.namespace_of(team)
            if ns in taken:
                raise ValueError(f"teams.{team}.namespace: expected a namespace of the team's own, "
                                 f"{ns!r} is {taken[ns]}")
            taken[ns] = f"team {team}'s"
        return self

    @property
    def capacity(self) -> Optional[tuple[int, str]]:
        """Accelerator units the cluster offers servers, and where they come from; None: no limit."""
        if self.accelerator.kind == "vulkan":
            return self.accelerator.share_count, f"accelerator.shareCount {self.accelerator.share_count}"
        pool = self.pool
        if pool is None:
            return None
        return pool.capacity, (f"{pool.per_node} per node × up to {pool.max_nodes} nodes the autoscaler adds"
                               if pool.autoscaled else
                               f"{pool.per_node} per node × {pool.nodes} nodes that exist; nothing adds more")

    @property
    def pool(self) -> Optional[AcceleratorPool]:
        """The node pool that carries the accelerator (GPU and TPU clusters)."""
        if self.accelerator.kind not in ("nvidia", "tpu"):
            return None
        assert self.cluster.kind != "minikube"  # minikube serves on vulkan or none (checked)
        return self.cluster.accelerator_pool(self.accelerator.kind)

    def units_per_replica(self, model: ServedModel) -> int:
        """Accelerator units one replica of `model` holds: a TPU replica takes its whole host."""
        pool = self.pool
        if self.accelerator.kind == "tpu" and pool is not None:
            return pool.per_node
        if self.accelerator.kind == "none":
            return 0
        return getattr(model, "accelerators", None) or 1

    @property
    def platform_units(self) -> int:
        """Units the stack file's own models hold at their most replicas (the router: one pod)."""
        if self.llama_router.enabled:
            return 0 if self.accelerator.kind == "none" else 1
        return sum(self.units_per_replica(m) * m.most_replicas for m in self.models)

    def _replicas_fit(self, pool: Optional[AcceleratorPool]) -> None:
        """Every replica of every model must find its accelerators on nodes that exist, or that
        an autoscaler will add: otherwise `up` waits for pods that never schedule."""
        if self.capacity is None or self.llama_router.enabled:
            return  # no limit; or one router pod holds one share and serves every model from it
        capacity, where = self.capacity
        used = 0
        for i, m in enumerate(self.models):
            used += self.units_per_replica(m) * m.most_replicas
            if used > capacity:
                raise ValueError(
                    f"models[{i}].{replicas_key(m)}: the models need {used} {self.accelerator.kind} units in all, "
                    f"the cluster offers {capacity} ({where})"
                )

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list) -> list:
        names = [m.name for m in models]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"model name {name!r} is used more than once; names must be unique")
        return models


REMOVED_UI_API_KEY = (
    "uiApiKey: no longer a setting; Open WebUI reaches every model through the front door with "
    "a key the stack generates for it (output uiApiKey): remove the key"
)
REMOVED_DELETE_MODEL_CACHES = (
    "deleteModelCaches: no longer a setting; a model's caches go with its StatefulSet, so removing "
    "the model or `pulumi destroy` deletes them (see docs/cloud-stacks.md, 'Model caches'): remove the key"
)
