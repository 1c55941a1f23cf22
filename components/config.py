"""The whole stack configuration, parsed once and checked before any resource is registered.

Keys live under the project namespace (`llm-platform:<key>`) in `Pulumi.<stack>.yaml`. Every
model forbids unknown fields, so a misspelt key is refused instead of silently ignored.
"""

from __future__ import annotations

import json
import os
import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    Discriminator,
    Tag,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from .hardware import (
    EKS_GPU_TAINT, G2_GPUS, GKE_GPU_TAINT, GKE_TPU_TAINT, GPUS_PER_INSTANCE, TPU_ACCELERATOR_LABELS,
    AcceleratorPool, gpus_per_instance, tpu_host,
)

PROJECT = "llm-platform"

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MINIKUBE_SIZE = re.compile(r"^[0-9]+(mb|m|gb|g)$")
_K8S_VERSION = re.compile(r"^v1\.[0-9]+\.[0-9]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHART_VERSION = re.compile(r"^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$")


class ConfigError(Exception):
    """Bad stack config: one line naming the stack file, the key and what was expected."""


def _matching(pattern: re.Pattern, expected: str):
    """A validator refusing values that do not match `pattern`, saying what was expected."""

    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"expected {expected}, got {value!r}")
        return value

    return check


_dns_label = _matching(
    _DNS_LABEL,
    "a DNS label (lowercase letters, digits and '-', starting with a letter, at most 63 characters)",
)
_quantity = _matching(_QUANTITY, "a Kubernetes quantity such as '2', '500m' or '4Gi'")
_minikube_size = _matching(_MINIKUBE_SIZE, "a size such as '12g' or '8192mb'")
_k8s_version = _matching(_K8S_VERSION, "a Kubernetes version such as 'v1.34.0'")
_pinned_chart = _matching(_CHART_VERSION, "an exact chart version such as '1.2.3' (no ranges)")


def pinned_image(value: str) -> str:
    """An image reference with a fixed tag or a digest; `latest` and bare names are refused."""
    if "@sha256:" in value:
        return value
    name, _, tag = value.rpartition(":")
    if not name or "/" in tag or tag in ("latest", ""):
        raise ValueError(f"expected an image pinned to a tag or digest (not 'latest'), got {value!r}")
    return value


def _master_key(value: str) -> str:
    # The message never repeats the value: it is a secret.
    if not re.fullmatch(r"sk-\S{16,}", value):
        raise ValueError("expected a key starting with 'sk-' followed by at least 16 characters (LiteLLM's "
                         "master key format); the value given does not")
    return value


def _existing_file(value: str) -> str:
    if not os.path.isfile(os.path.expanduser(value)):
        raise ValueError(f"expected a readable kubeconfig file, {value!r} does not exist")
    return value


_API_KEY = re.compile(r"^[A-Za-z0-9._~+/=][A-Za-z0-9._~+/=-]{15,}$")


def _api_key(value: str) -> str:
    # Keys travel as a file of one key a line (llama.cpp), a YAML list expanded into flags (vLLM,
    # where a leading '-' would read as a flag) and a ';'-separated list (Open WebUI). The error
    # never repeats the key.
    if not _API_KEY.match(value):
        raise ValueError("expected at least 16 characters of letters, digits and . _ ~ + / = -, "
                         "not starting with '-'")
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
Quantity = Annotated[str, AfterValidator(_quantity)]
MinikubeSize = Annotated[str, AfterValidator(_minikube_size)]
K8sVersion = Annotated[str, AfterValidator(_k8s_version)]
ChartVersion = Annotated[str, AfterValidator(_pinned_chart)]
Image = Annotated[str, AfterValidator(pinned_image)]
ApiKey = Annotated[str, AfterValidator(_api_key)]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


# --- cluster -------------------------------------------------------------------------------


class MinikubeCluster(_Model):
    """A minikube VM on the Mac (krunkit driver) with the host models folder mounted."""

    kind: Literal["minikube"]
    profile: DnsLabel = "llm-platform"
    driver: Literal["krunkit"] = "krunkit"
    cpus: int = Field(6, ge=2)
    memory: MinikubeSize = "12g"
    disk_size: MinikubeSize = "60g"
    kubernetes_version: K8sVersion = "v1.34.0"
    models_dir: str = Field(min_length=1)
    ingress_node_port: int = Field(30080, ge=30000, le=32767)


class ExistingCluster(_Model):
    """A cluster the user already has, reached through a kubeconfig context."""

    kind: Literal["existing"]
    kubeconfig: Annotated[str, AfterValidator(_existing_file)] = Field("~/.kube/config", validate_default=True)
    context: Optional[str] = None
    kubernetes_version: K8sVersion = "v1.34.0"
    # Folder on the host where model files are fetched to; it must be mounted on the
    # node(s) at /mnt/models (kind extraMounts, k3d --volume, ...). None: manage files yourself.
    models_dir: Optional[str] = None
    ingress_service_type: Literal["LoadBalancer", "NodePort", "ClusterIP"] = "LoadBalancer"
    ingress_address: str = "localhost"
    # Whether this cluster's CNI enforces NetworkPolicies; the program cannot see it. The
    # model namespace's NetworkPolicies are created only when this says "enforced".
    network_policy: Literal["enforced", "unknown"] = "unknown"


class NodeGroup(_Model):
    instance_type: str = Field(pattern=r"^[a-z0-9-]+\.[a-z0-9]+$")
    min_size: int = Field(1, ge=0)
    desired_size: int = Field(1, ge=0)
    max_size: int = Field(2, ge=1)
    disk_size_gb: int = Field(50, ge=20)

    @model_validator(mode="after")
    def _ordered(self) -> "NodeGroup":
        if not self.min_size <= self.desired_size <= self.max_size:
            raise ValueError(
                f"expected minSize <= desiredSize <= maxSize, got {self.min_size}, {self.desired_size}, {self.max_size}"
            )
        return self


def _gpu_instance(value: str) -> str:
    if gpus_per_instance(value) is None:
        families = ", ".join(f"{f}.*" for f in GPUS_PER_INSTANCE)
        raise ValueError(f"expected an NVIDIA GPU instance type ({families}), got {value!r}")
    return value


def _tpu_machine(value: str) -> str:
    if tpu_host(value) is None:
        kinds = " or ".join(f"{f}-1t/4t/8t" for f in TPU_ACCELERATOR_LABELS)
        raise ValueError(f"cannot derive the TPU accelerator from {value!r}; expected {kinds}")
    return value


class GpuNodeGroup(NodeGroup):
    instance_type: Annotated[str, AfterValidator(_gpu_instance)] = "g6.xlarge"
    ami_type: Literal["AL2023_x86_64_NVIDIA", "BOTTLEROCKET_x86_64_NVIDIA"] = "AL2023_x86_64_NVIDIA"
    min_size: int = Field(0, ge=0)
    disk_size_gb: int = Field(200, ge=50)
    # The one zone of the GPU nodes (default: the first of availabilityZones). An EBS model
    # cache lives in one zone: its pod must always find a GPU node there.
    zone: Optional[str] = Field(None, pattern=r"^[a-z]{2}(-gov)?-[a-z]+-[0-9][a-z]$")


class EksCluster(_Model):
    """EKS in its own VPC: a system node group and a tainted NVIDIA GPU node group."""

    kind: Literal["eks"]
    name: DnsLabel = "llm-platform"
    region: str = Field(pattern=r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]$")
    availability_zones: list[str] = Field(min_length=2)
    kubernetes_version: str = Field("1.33", pattern=r"^1\.[0-9]+$")
    vpc_cidr: str = Field("10.0.0.0/16", pattern=r"^[0-9.]+/16$")
    system_nodes: NodeGroup = NodeGroup(instance_type="m6i.large", min_size=2, desired_size=2, max_size=3)
    gpu_nodes: GpuNodeGroup = GpuNodeGroup()

    @property
    def gpu_zone(self) -> str:
        return self.gpu_nodes.zone or self.availability_zones[0]

    def accelerator_pool(self, kind: str) -> AcceleratorPool:
        return AcceleratorPool(
            per_node=gpus_per_instance(self.gpu_nodes.instance_type),
            labels={"llm-platform/accelerator": "nvidia"},
            taint=EKS_GPU_TAINT,
            device_plugin="nvidia-chart",
            # Nothing scales a managed node group but its desired size (no autoscaler yet).
            nodes=self.gpu_nodes.desired_size,
            max_nodes=self.gpu_nodes.max_size,
            autoscaled=False,
        )

    @model_validator(mode="after")
    def _zones_in_region(self) -> "EksCluster":
        for zone in self.availability_zones:
            if not re.match(rf"^{re.escape(self.region)}[a-z]$", zone):
                raise ValueError(f"availabilityZones: expected zones of {self.region} such as {self.region}a, got {zone!r}")
        if self.gpu_nodes.zone and self.gpu_nodes.zone not in self.availability_zones:
            raise ValueError(f"gpuNodes.zone: expected one of availabilityZones {self.availability_zones}, "
                             f"got {self.gpu_nodes.zone!r}")
        return self


class GkeNodePool(_Model):
    machine_type: str = Field("e2-standard-4", pattern=r"^[a-z0-9]+-[a-z0-9-]+$")
    min_nodes: int = Field(1, ge=0)
    max_nodes: int = Field(3, ge=1)


class TpuNodePool(GkeNodePool):
    machine_type: Annotated[str, AfterValidator(_tpu_machine)] = "ct5lp-hightpu-4t"
    min_nodes: int = Field(0, ge=0)
    max_nodes: int = Field(1, ge=1)
    # A zone of the region that offers this TPU generation.
    zone: str = Field(pattern=r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
    # Only for multi-host slices, e.g. "4x4"; single-host pools take the host's topology.
    topology: Optional[str] = Field(None, pattern=r"^[0-9]+x[0-9]+(x[0-9]+)?$")
    spot: bool = False


def _g2_machine(value: str) -> str:
    if value not in G2_GPUS:
        raise ValueError(f"expected a G2 (NVIDIA L4) machine type such as 'g2-standard-8', got {value!r}")
    return value


class GpuNodePool(GkeNodePool):
    """NVIDIA L4 GPUs on G2 machines, drivers installed by GKE."""

    machine_type: Annotated[str, AfterValidator(_g2_machine)] = "g2-standard-8"
    accelerator_type: Literal["nvidia-l4"] = "nvidia-l4"
    min_nodes: int = Field(0, ge=0)
    max_nodes: int = Field(1, ge=1)
    zone: str = Field(pattern=r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
    spot: bool = False

    @property
    def gpus(self) -> int:
        return G2_GPUS[self.machine_type]


class GkeCluster(_Model):
    """GKE Standard in its own VPC network: a system pool and a TPU or GPU pool."""

    kind: Literal["gke"]
    name: DnsLabel = "llm-platform"
    project: str = Field(pattern=r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
    region: str = Field(pattern=r"^[a-z]+-[a-z]+[0-9]+$")
    # A region for a regional control plane, or a zone for a zonal one.
    location: Optional[str] = Field(None, pattern=r"^[a-z]+-[a-z]+[0-9]+(-[a-z])?$")
    release_channel: Literal["RAPID", "REGULAR", "STABLE"] = "REGULAR"
    kubernetes_version: str = Field("1.33", pattern=r"^1\.[0-9]+$")
    subnet_cidr: str = Field("10.10.0.0/20", pattern=r"^[0-9.]+/[0-9]+$")
    system_pool: GkeNodePool = GkeNodePool()
    tpu_pool: Optional[TpuNodePool] = None
    gpu_pool: Optional[GpuNodePool] = None

    def accelerator_pool(self, kind: str) -> AcceleratorPool:
        if kind == "tpu":
            host = tpu_host(self.tpu_pool.machine_type)
            return AcceleratorPool(
                per_node=host.chips,
                labels={
                    "cloud.google.com/gke-tpu-accelerator": host.accelerator_label,
                    "cloud.google.com/gke-tpu-topology": self.tpu_pool.topology or host.topology,
                },
                taint=GKE_TPU_TAINT,
                device_plugin="managed",
                # A pool with `autoscaling` runs GKE's autoscaler: it adds nodes up to the max.
                nodes=self.tpu_pool.min_nodes,
                max_nodes=self.tpu_pool.max_nodes,
                autoscaled=True,
            )
        return AcceleratorPool(
            per_node=self.gpu_pool.gpus,
            labels={"cloud.google.com/gke-accelerator": self.gpu_pool.accelerator_type},
            taint=GKE_GPU_TAINT,
            device_plugin="managed",
            nodes=self.gpu_pool.min_nodes,
            max_nodes=self.gpu_pool.max_nodes,
            autoscaled=True,
        )

    @model_validator(mode="after")
    def _pools_in_region(self) -> "GkeCluster":
        if (self.tpu_pool is None) == (self.gpu_pool is None):
            raise ValueError("tpuPool: expected exactly one accelerator pool, tpuPool or gpuPool")
        zones = [("location", self.location)]
        zones += [("tpuPool.zone", self.tpu_pool.zone)] if self.tpu_pool else []
        zones += [("gpuPool.zone", self.gpu_pool.zone)] if self.gpu_pool else []
        for key, zone in zones:
            if zone and not zone.startswith(self.region):
                raise ValueError(f"{key}: expected {self.region} or one of its zones, got {zone!r}")
        return self


ClusterConfig = Annotated[
    Union[MinikubeCluster, ExistingCluster, EksCluster, GkeCluster], Field(discriminator="kind")
]
CLUSTER_KINDS = ("minikube", "existing", "eks", "gke")


# --- accelerator ---------------------------------------------------------------------------


class AcceleratorConfig(_Model):
    kind: Literal["none", "vulkan", "nvidia", "tpu"] = "vulkan"
    # How many pods may share one GPU device (generic-device-plugin group count).
    share_count: int = Field(4, ge=1, le=64)


# --- models --------------------------------------------------------------------------------


_QUANTITY_SUFFIX = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
                    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def whole_cpus(quantity: str) -> int:
    """The whole CPUs a CPU quantity grants ("4" -> 4, "3500m" -> 3), at least one."""
    number, suffix = re.match(r"^([0-9.]+)(\D*)$", quantity).groups()
    return max(1, int(float(number) * _QUANTITY_SUFFIX.get(suffix, 1)))


class Resources(_Model):
    cpu: Quantity = "2"
    memory: Quantity = "4Gi"
    cpu_limit: Quantity = "4"
    memory_limit: Quantity = "6Gi"

    @property
    def threads(self) -> int:
        """Compute threads that fit the CPU limit: more would contend for the pod's CFS quota."""
        return whole_cpus(self.cpu_limit)


def _gguf_file(value: str) -> str:
    if "/" in value or not value.endswith(".gguf"):
        raise ValueError(f"expected a GGUF file name such as 'model.Q8_0.gguf' (no folders), got {value!r}")
    return value


def _no_key_flags(*flags: str):
    """Refuse extra args that would put an API key on the command line or replace the file
    the platform hands the keys over in."""
    def check(args: list[str]) -> list[str]:
        for arg in args:
            if arg.split("=", 1)[0] in flags:
                raise ValueError(f"expected no {arg.split('=', 1)[0]}: the platform passes the API keys (the front door's)")
        return args
    return check


def _sha256(value: str) -> str:
    if not _SHA256.match(value):
        raise ValueError("expected 64 lowercase hex digits")
    return value


class ModelConfig(_Model):
    """A GGUF model served by llama.cpp; `name` is the alias clients pass as `model`."""

    name: DnsLabel
    runtime: Literal["llama-cpp"] = "llama-cpp"
    file: Annotated[str, AfterValidator(_gguf_file)]
    hf_repo: Optional[str] = Field(None, pattern=r"^[\w.-]+/[\w.-]+$")
    url: Optional[str] = Field(None, pattern=r"^https://\S+$")
    sha256: Optional[Annotated[str, AfterValidator(_sha256)]] = None
    size_bytes: Optional[int] = Field(None, gt=0)
    # Tokens of context; 0 (the default): the context the model was trained for, read from the
    # GGUF file by the server. A larger value than that only wastes memory.
    ctx_size: int = Field(0, ge=0)
    replicas: int = Field(1, ge=0)
    resources: Resources = Resources()
    image: Optional[Image] = None
    extra_args: Annotated[list[str], AfterValidator(_no_key_flags("--api-key", "--api-key-file"))] = []

    @field_validator("ctx_size")
    @classmethod
    def _usable_context(cls, value: int) -> int:
        if 0 < value < 256:
            raise ValueError(f"expected 0 (the model's own context) or at least 256 tokens, got {value}")
        return value

    @property
    def download_url(self) -> Optional[str]:
        if self.url:
            return self.url
        if self.hf_repo:
            return f"https://huggingface.co/{self.hf_repo}/resolve/main/{self.file}"
        return None


class VllmResources(Resources):
    cpu: Quantity = "4"
    memory: Quantity = "16Gi"
    cpu_limit: Quantity = "8"
    memory_limit: Quantity = "24Gi"


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
GI = 2**30


def quantity_bytes(value: str) -> int:
    """Bytes of a storage quantity such as '140Gi' or '150G'."""
    m = re.match(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$", value)
    return int(float(m[1]) * _UNITS[m[2]])


def _storage(value: str) -> str:
    m = re.match(r"^[0-9]+(\.[0-9]+)?(k|M|G|T|Ki|Mi|Gi|Ti)$", value)
    if not m:
        raise ValueError(f"expected a size such as '140Gi' or '150G', got {value!r}")
    return value


Storage = Annotated[str, AfterValidator(_storage)]
# Without a stated weight size: a cache that holds a model of a few tens of GB.
DEFAULT_CACHE = "100Gi"
# The cache classes provision 4000 IOPS, which gp3 and Hyperdisk give volumes of 8 GiB and up.
MIN_CACHE_GI = 10


def cache_for(weights: str) -> str:
    """Room for the weights plus a fifth and 10Gi: tokenizer files, partial downloads, the
    XLA cache on TPUs, rounded up to whole Gi."""
    return f"{-(-quantity_bytes(weights) * 6 // 5 // GI) + 10}Gi"


class VllmModel(_Model):
    """A Hugging Face model served by vLLM; each replica caches the weights on its own volume."""

    name: DnsLabel
    runtime: Literal["vllm"]
    hf_model: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    max_model_len: int = Field(8192, ge=256)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    # Accelerators per replica (= --tensor-parallel-size). Default: 1 GPU, or every TPU chip of a host.
    accelerators: Optional[int] = Field(None, ge=1)
    replicas: int = Field(1, ge=0)
    # Size of the weights as downloaded (e.g. 140Gi for a 70B model in bf16): sizes the cache
    # and the startup budget.
    weights_size: Optional[Storage] = None
    # Default: weightsSize plus headroom, or 100Gi when the weights' size is not stated.
    cache_size: Optional[Storage] = None
    resources: VllmResources = VllmResources()
    image: Optional[Image] = None
    extra_args: Annotated[list[str], AfterValidator(_no_key_flags("--api-key", "--config"))] = []

    @property
    def cache(self) -> str:
        if self.cache_size:
            return self.cache_size
        return cache_for(self.weights_size) if self.weights_size else DEFAULT_CACHE

    @model_validator(mode="after")
    def _cache_holds_the_weights(self) -> "VllmModel":
        if quantity_bytes(self.cache) < MIN_CACHE_GI * GI:
            raise ValueError(f"cacheSize: expected at least {MIN_CACHE_GI}Gi, got {self.cache!r}")
        if self.weights_size and quantity_bytes(self.cache) < quantity_bytes(self.weights_size):
            raise ValueError(f"cacheSize: {self.cache} cannot hold the model's weights "
                             f"(weightsSize {self.weights_size}); leave it out to size it from the weights")
        return self


def _runtime_of(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("runtime", "llama-cpp")
    return getattr(value, "runtime", "llama-cpp")


AnyModel = Annotated[
    Union[Annotated[ModelConfig, Tag("llama-cpp")], Annotated[VllmModel, Tag("vllm")]],
    Discriminator(_runtime_of),
]
RUNTIMES = ("llama-cpp", "vllm")

DEFAULT_MODEL = ModelConfig(
    name="tinyllama",
    file="tinyllama-1.1b-chat-v1.0.Q8_0.gguf",
    hf_repo="TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
)
# A small public model that fits one L4 GPU or one TPU v5e host.
DEFAULT_VLLM_MODEL = VllmModel(name="qwen", runtime="vllm", hf_model="Qwen/Qwen2.5-1.5B-Instruct")


# --- platform services ---------------------------------------------------------------------


class MeshConfig(_Model):
    chart_version: ChartVersion = "1.30.3"


class UiConfig(_Model):
    """Open WebUI, delivered by Argo CD."""

    enabled: bool = True
    namespace: DnsLabel = "open-webui"
    chart_version: ChartVersion = "16.0.0"
    storage_size: Quantity = "2Gi"
    # The admin account created at first start (password: the `uiAdminPassword` secret, or
    # generated and shown by `pulumi stack output uiAdminPassword --show-secrets`).
    admin_email: str = Field("admin@llm-platform.local", pattern=r"^[^@\s]+@[^@\s]+$")
    # Whether visitors may create accounts; closed by default, the admin adds users.
    signup: bool = False


class ProviderModel(_Model):
    """A model of a hosted OpenAI-compatible provider, offered through the front door."""

    # The name clients send as `model`.
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    # LiteLLM's "<provider>/<model>", e.g. "openai/gpt-4o-mini" or "anthropic/claude-sonnet-4-5".
    model: str = Field(pattern=r"^[a-z0-9_]+/\S+$")
    api_base: Optional[str] = Field(None, pattern=r"^https://\S+$")


class FrontDoorResources(Resources):
    cpu: Quantity = "500m"
    memory: Quantity = "1Gi"
    cpu_limit: Quantity = "2"
    memory_limit: Quantity = "2Gi"


class FrontDoorConfig(_Model):
    """LiteLLM's proxy in front of every model: one base URL, routing by `model`."""

    namespace: DnsLabel = "front-door"
    # None: the release the tests run (components/front_door.py).
    image: Optional[Image] = None
    # None: as many as the ingress gateway keeps (1 on a laptop, 2 on the clouds).
    replicas: Optional[int] = Field(None, ge=1)
    # Longest a request (a long streamed generation included) may take.
    timeout_seconds: int = Field(900, ge=30, le=3600)
    # Prometheus metrics at /metrics.
    metrics: bool = True
    resources: FrontDoorResources = FrontDoorResources()
    # Hosted models; each needs its key in the `providerKeys` secret, under its name.
    providers: list[ProviderModel] = []

    @model_validator(mode="after")
    def _providers_have_a_host(self) -> "FrontDoorConfig":
        if not self.providers:
            return self
        # Imported here: the front door's module imports this one's neighbours.
        from .front_door import PROVIDER_HOSTS, provider_host

        for i, p in enumerate(self.providers):
            if provider_host(p) is None:
                raise ValueError(f"providers[{i}].apiBase: required for {p.model.split('/')[0]!r} models "
                                 f"(known without it: {', '.join(PROVIDER_HOSTS)})")
        return self


class LlamaRouterConfig(_Model):
    """llama.cpp's router mode: one llama-server serves every GGUF model, loading on demand."""

    enabled: bool = False
    # Models held in memory at once; the least recently used beyond it is unloaded.
    models_max: int = Field(2, ge=1)
    resources: Resources = Resources()
    # None: the stack's llama.cpp image (its build must have router mode).
    image: Optional[Image] = None


class AppConfig(_Model):
    """Any further Helm chart Argo CD should deliver."""

    name: DnsLabel
    namespace: DnsLabel
    repo_url: str = Field(pattern=r"^(https|oci)://\S+$")
    chart: str = Field(min_length=1)
    target_revision: ChartVersion
    values: dict[str, Any] = {}


class GitOpsConfig(_Model):
    chart_version: ChartVersion = "10.1.1"


class SecurityConfig(_Model):
    """Secure by default; each switch is an opt-out for a laptop that needs it."""

    # `/v1` requires an API key (Authorization: Bearer ...).
    api_auth: bool = True
    # STRICT mutual TLS in the model and UI namespaces, and only the ingress gateway and the UI
    # may call the model servers.
    mtls: bool = True
    # Default-deny NetworkPolicies in the model namespace, with the few flows it needs allowed.
    network_policies: bool = True
    # Model servers run under the restricted Pod Security profile, enforced on their namespace.
    restricted_pods: bool = True
    # Extra groups for the model servers, e.g. the node's render group so a non-root server can
    # open /dev/dri.
    supplemental_groups: list[Annotated[int, Field(ge=1)]] = []
    # Namespaces (e.g. your Prometheus's) allowed to GET /metrics from the model servers.
    metrics_from: list[DnsLabel] = []


class CertManagerConfig(_Model):
    """Certificates from an ACME issuer (Let's Encrypt by default) through cert-manager."""

    chart_version: ChartVersion = "v1.21.1"
    acme_email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$")
    acme_server: str = Field("https://acme-v02.api.letsencrypt.org/directory", pattern=r"^https://\S+$")


class GatewayConfig(_Model):
    # None: answer on any host name (the ingress address is used in URLs).
    host: Optional[str] = Field(None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    # TLS from a certificate Secret in the istio-ingress namespace...
    tls_secret: Optional[DnsLabel] = None
    # ...or issued by cert-manager.
    cert_manager: Optional[CertManagerConfig] = None

    @model_validator(mode="after")
    def _tls_needs_a_host(self) -> "GatewayConfig":
        if self.tls_secret and self.cert_manager:
            raise ValueError("certManager: expected either tlsSecret or certManager, not both")
        if (self.tls_secret or self.cert_manager) and not self.host:
            raise ValueError("host: required when TLS is on (the certificate names it)")
        return self


ACCELERATORS_BY_CLUSTER = {
    "minikube": ("vulkan", "none"),
    "existing": ("none",),
    "eks": ("nvidia",),
    "gke": ("tpu", "nvidia"),
}
RUNTIMES_BY_ACCELERATOR = {"vulkan": ("llama-cpp",), "none": ("llama-cpp",), "nvidia": ("vllm",), "tpu": ("vllm",)}


class StackConfig(_Model):
    cluster: ClusterConfig
    # Default: what the cluster kind serves on (see _defaults_for_the_cluster).
    accelerator: AcceleratorConfig = AcceleratorConfig()
    # Default: TinyLlama on llama.cpp, or a small vLLM model on GPU/TPU clusters.
    models: list[AnyModel] = Field(default_factory=lambda: [DEFAULT_MODEL], min_length=1)
    models_namespace: DnsLabel = "models"
    mesh: MeshConfig = MeshConfig()
    gitops: GitOpsConfig = GitOpsConfig()
    ui: UiConfig = UiConfig()
    apps: list[AppConfig] = []
    gateway: GatewayConfig = GatewayConfig()
    security: SecurityConfig = SecurityConfig()
    front_door: FrontDoorConfig = FrontDoorConfig()
    llama_router: LlamaRouterConfig = LlamaRouterConfig()
    # The client API key (a Pulumi secret), the front door's master key; generated and kept in
    # state when not set. LiteLLM takes only master keys that start with "sk-".
    api_key: Optional[Annotated[ApiKey, AfterValidator(_master_key)]] = None
    # Keys of the hosted providers (a Pulumi secret): provider entry name -> key.
    provider_keys: dict[str, str] = {}
    # Open WebUI's admin password (a Pulumi secret); generated and kept in state when not set.
    ui_admin_password: Optional[str] = None
    # Hugging Face token for gated models: `pulumi config set --secret hfToken hf_...`.
    hf_token: Optional[str] = None

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
        pool = self.cluster.accelerator_pool(accel) if accel in ("nvidia", "tpu") else None
        per_node = pool.per_node if pool else None
        for i, m in enumerate(self.models):
            if m.runtime not in RUNTIMES_BY_ACCELERATOR[accel]:
                raise ValueError(
                    f"models[{i}].runtime: on {accel!r} models run with "
                    f"{' or '.join(RUNTIMES_BY_ACCELERATOR[accel])}, got {m.runtime!r}"
                )
            asked = getattr(m, "accelerators", None)
            if asked and per_node and asked > per_node:
                raise ValueError(
                    f"models[{i}].accelerators: {asked} asked (tensor-parallel size) but a node has only {per_node}"
                )
            if asked and accel == "tpu" and asked != per_node:
                raise ValueError(
                    f"models[{i}].accelerators: a TPU pod takes every chip of its host ({per_node}), got {asked}"
                )
        self._replicas_fit(pool)
        return self

    @model_validator(mode="after")
    def _router_serves_gguf(self) -> "StackConfig":
        if self.llama_router.enabled and self.accelerator.kind not in ("vulkan", "none"):
            raise ValueError(f"llamaRouter.enabled: router mode serves GGUF files with llama.cpp "
                             f"(accelerator vulkan or none), not on {self.accelerator.kind!r}")
        return self

    @model_validator(mode="after")
    def _providers_have_keys(self) -> "StackConfig":
        names = [m.name for m in self.models]
        for i, p in enumerate(self.front_door.providers):
            if p.name in names:
                raise ValueError(f"frontDoor.providers[{i}].name: {p.name!r} is already a model of the stack")
            names.append(p.name)
            if p.name not in self.provider_keys:
                raise ValueError(f"providerKeys: expected a key for provider {p.name!r} "
                                 f"(`pulumi config set --secret --path providerKeys.{p.name} ...`)")
        return self

    def _replicas_fit(self, pool: Optional[AcceleratorPool]) -> None:
        """Every replica of every model must find its accelerators on nodes that exist, or that
        an autoscaler will add: otherwise `up` waits for pods that never schedule."""
        kind = self.accelerator.kind
        if kind == "vulkan":
            capacity, where = self.accelerator.share_count, f"accelerator.shareCount {self.accelerator.share_count}"
        elif pool is not None:
            capacity = pool.capacity
            where = (f"{pool.per_node} per node × up to {pool.max_nodes} nodes the autoscaler adds" if pool.autoscaled
                     else f"{pool.per_node} per node × {pool.nodes} nodes that exist; nothing adds more")
        else:
            return
        if self.llama_router.enabled:
            return  # one router pod holds one share and serves every model from it
        used = 0
        for i, m in enumerate(self.models):
            per_replica = pool.per_node if kind == "tpu" else (getattr(m, "accelerators", None) or 1)
            used += per_replica * m.replicas
            if used > capacity:
                raise ValueError(
                    f"models[{i}].replicas: the models need {used} {kind} units in all, the cluster offers "
                    f"{capacity} ({where})"
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
    "the client key (apiKey): remove the key"
)
REMOVED_DELETE_MODEL_CACHES = (
    "deleteModelCaches: no longer a setting; model caches live as long as the cluster and "
    "`pulumi destroy` deletes them with it (see the README, 'Model caches'): remove the key"
)


# --- loading -------------------------------------------------------------------------------


def _key_path(loc: tuple) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif (i == 1 and loc[0] == "cluster" and item in CLUSTER_KINDS) or (
            i == 2 and loc[0] == "models" and item in RUNTIMES
        ):
            continue  # the union tag pydantic inserts, not a key the user wrote
        else:
            parts.append(("." if parts else f"{PROJECT}:") + display_key(item))
    return "".join(parts) or PROJECT


def display_key(key: str) -> str:
    """A key as written in the stack file; odd ones (spaces, colons, empty) quoted."""
    return key if re.fullmatch(r"[A-Za-z_][\w-]*", key) else json.dumps(key)


def _message(err: dict) -> str:
    kind = err["type"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key (check the spelling against the README's config reference)"
    if kind == "union_tag_invalid":
        ctx = err["ctx"]
        field = "runtime" if "runtime" in ctx["discriminator"] else "kind"
        return f"expected {field} to be one of {ctx['expected_tags']}, got {ctx['tag']!r}"
    msg = err["msg"].removeprefix("Value error, ")
    if kind in ("literal_error", "int_parsing", "greater_than_equal",
                "less_than_equal", "string_pattern_mismatch", "too_short", "greater_than"):
        msg += f", got {err.get('input')!r}"
    return msg


def parse(raw: dict[str, Any], stack_file: str) -> StackConfig:
    """Validate raw config (keys without the project prefix); raise ConfigError on bad input."""
    try:
        return StackConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key, msg = _key_path(err["loc"]), _message(err)
        # Checks across fields name their own key first: "availabilityZones: expected ...".
        sub = re.match(r"^([a-zA-Z][\w.\[\]]*): (.*)$", msg)
        if err["type"] == "value_error" and sub:
            key = f"{key}.{sub.group(1)}" if key != PROJECT else f"{PROJECT}:{sub.group(1)}"
            msg = sub.group(2)
        raise ConfigError(f"{stack_file}: {key}: {msg}") from None


SECRET_KEYS = ("hfToken", "apiKey", "uiAdminPassword", "providerKeys")


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        return json.loads(value)
    return value


def load(stack: str) -> StackConfig:
    """Read every `llm-platform:*` key the engine passed to this program and parse it."""
    # The SDK has no public call listing all config keys; unknown top-level keys are only
    # caught by reading the map the engine filled.
    from pulumi.runtime.config import CONFIG, get_config_env, is_config_secret

    merged = {**get_config_env(), **CONFIG.get()}
    prefix = f"{PROJECT}:"
    raw = {k[len(prefix):]: _decode(v) for k, v in merged.items() if k.startswith(prefix)}
    stack_file = f"Pulumi.{stack}.yaml"
    for key in SECRET_KEYS:
        if key in raw and not is_config_secret(prefix + key):
            raise ConfigError(
                f"{stack_file}: {prefix}{key}: expected a secret; set it with "
                f"`pulumi config set --secret {key} ...` so it is never stored in plain text"
            )
    return parse(raw, stack_file)


def expand_path(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))
