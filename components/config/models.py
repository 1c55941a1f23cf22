"""Accelerator and models sections: what is served, on what, with which resources."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from components.config.base import _SHA256, DnsLabel, Image, Quantity, _Model

# --- accelerator ---------------------------------------------------------------------------


class AcceleratorConfig(_Model):
    """What the model servers run on."""

    kind: Literal["none", "vulkan", "nvidia", "tpu"] = "vulkan"
    """`vulkan` (Mac GPU, or `/dev/dri` on an existing cluster), `none` (CPU), `nvidia` (eks, gke
    with `gpuPool`, existing with `acceleratorNodes`), `tpu` (gke, existing with
    `acceleratorNodes`). Left out: what the cluster kind serves on (`vulkan` on minikube, `nvidia`
    on eks and on gke with a `gpuPool`, `tpu` on gke, `none` on existing)."""
    share_count: int = Field(4, ge=1, le=64)
    """`vulkan`: how many pods may share the GPU device (the device plugin's group count)."""


# --- models --------------------------------------------------------------------------------


_QUANTITY_SUFFIX = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
                    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def whole_cpus(quantity: str) -> int:
    """The whole CPUs a CPU quantity grants ("4" -> 4, "3500m" -> 3), at least one."""
    m = re.match(r"^([0-9.]+)(\D*)$", quantity)
    assert m, f"not a CPU quantity: {quantity!r}"  # a Quantity field: its pattern matched already
    number, suffix = m.groups()
    return max(1, int(float(number) * _QUANTITY_SUFFIX.get(suffix, 1)))


class Resources(_Model):
    """CPU and memory of a server's pod: requests and limits."""

    cpu: Quantity = "2"
    """CPU request."""
    memory: Quantity = "4Gi"
    """Memory request."""
    cpu_limit: Quantity = "4"
    """CPU limit; llama.cpp gets `--threads` equal to its whole CPUs (`"3500m"` → 3), not one
    thread per host core."""
    memory_limit: Quantity = "6Gi"
    """Memory limit."""

    @property
    def threads(self) -> int:
        """Compute threads that fit the CPU limit: more would contend for the pod's CFS quota."""
        return whole_cpus(self.cpu_limit)


def _gguf_file(value: str) -> str:
    """a GGUF file name such as `model.Q8_0.gguf` (no folders)"""
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
    check.__doc__ = f"no {' or '.join(f'`{f}`' for f in flags)}: the platform passes the API keys"
    return check


def _sha256(value: str) -> str:
    """64 lowercase hex digits"""
    if not _SHA256.match(value):
        raise ValueError("expected 64 lowercase hex digits")
    return value


class Autoscaling(_Model):
    """Replicas that follow the model server's queue of waiting requests (KEDA on Prometheus)."""

    enabled: bool = False
    """KEDA sizes the server by its queue, instead of `replicas`; needs `monitoring.enabled`, and
    not with `llamaRouter.enabled`."""
    min_replicas: int = Field(1, ge=0)
    """Fewest replicas; 0 only with `scaleToZero: true`."""
    max_replicas: int = Field(2, ge=1)
    """Most replicas; counted against the accelerators that exist or that the node autoscaler adds
    (Karpenter's or GKE's maximum)."""
    target_queue_depth: int = Field(4, ge=1)
    """Requests waiting per replica that the autoscaler aims for: more adds replicas."""
    scale_to_zero: bool = False
    """Opt-in, with `minReplicas: 0` and `frontDoor.metrics`: no replica (and, with a node
    autoscaler, no accelerator node) while idle; the next request waits for a node, the image and
    the model to load (see the cold starts in docs/autoscaling.md)."""
    cooldown_seconds: int = Field(1800, ge=60)
    """Scale to zero only: idle time before the last replica goes."""
    scale_down_after_seconds: int = Field(300, ge=0)
    """How long the queue must stay short before replicas are removed: reloading costs minutes."""

    @model_validator(mode="after")
    def _ordered(self) -> "Autoscaling":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas: expected at most maxReplicas ({self.max_replicas}), "
                             f"got {self.min_replicas}")
        if self.min_replicas == 0 and not self.scale_to_zero:
            raise ValueError("minReplicas: 0 scales the server to zero, which is opt-in: set "
                             "scaleToZero: true (the first request then waits for a cold start)")
        if self.scale_to_zero and self.min_replicas != 0:
            raise ValueError(f"scaleToZero: expected minReplicas 0, got {self.min_replicas}")
        return self


class Price(_Model):
    """What a model's tokens cost, in US dollars per million: the front door counts each
    request's spend by it, against the budgets of virtual keys (a team's included)."""

    input: float = Field(ge=0)
    """Per million prompt tokens."""
    output: float = Field(ge=0)
    """Per million generated tokens."""

    @model_validator(mode="after")
    def _not_free(self) -> "Price":
        # LiteLLM skips every budget check for a model whose two prices are both zero.
        if self.input == 0 and self.output == 0:
            raise ValueError("expected a price above zero for input or output tokens; for a free "
                             "model leave `price` out")
        return self


def most_replicas(model) -> int:
    """The most replicas the server may run: what accelerators, rollouts and budgets count."""
    return model.autoscaling.max_replicas if model.autoscaling.enabled else model.replicas


def _replicas_or_autoscaling(model) -> None:
    if model.autoscaling.enabled and "replicas" in model.model_fields_set:
        raise ValueError("replicas: not used while autoscaling.enabled; set autoscaling.minReplicas "
                         "and autoscaling.maxReplicas instead")


class ModelConfig(_Model):
    """A GGUF model served by llama.cpp; `name` is the alias clients pass as `model`."""

    name: DnsLabel
    """The alias clients send as `"model"`; unique among the stack's models."""
    runtime: Literal["llama-cpp"] = "llama-cpp"
    """`llama-cpp` (the default): llama.cpp's `llama-server` serves a GGUF file."""
    file: Annotated[str, AfterValidator(_gguf_file)]
    """The GGUF file in the models folder (`cluster.modelsDir`, mounted at `/mnt/models`)."""
    hf_repo: Optional[str] = Field(None, pattern=r"^[\w.-]+/[\w.-]+$")
    """Hugging Face repository to download `file` from when it is not in the folder yet."""
    url: Optional[str] = Field(None, pattern=r"^https://\S+$")
    """Or a URL to download it from; with neither, the file must already be there."""
    sha256: Optional[Annotated[str, AfterValidator(_sha256)]] = None
    """The file's SHA-256, checked after download (fetched to a temporary name, checked, then renamed)."""
    size_bytes: Optional[int] = Field(None, gt=0)
    """The file's size in bytes, checked after download."""
    ctx_size: int = Field(0, ge=0)
    """Tokens of context; 0 (the default): the context the model was trained for, read from the
    GGUF file by the server. A larger value than that only wastes memory."""
    replicas: int = Field(1, ge=0)
    """Pods serving the model; not with `autoscaling.enabled`."""
    autoscaling: Autoscaling = Autoscaling()
    """Off by default: replicas by the server's queue (KEDA), see docs/autoscaling.md."""
    resources: Resources = Resources()
    """CPU and memory of each pod."""
    image: Optional[Image] = None
    """The server's image; none: the runtime's pinned image for the accelerator."""
    extra_args: Annotated[list[str], AfterValidator(_no_key_flags("--api-key", "--api-key-file"))] = []
    """Further `llama-server` arguments."""
    price: Optional[Price] = None
    """What its tokens cost (US dollars per million); none: the front door counts no spend for it.
    Not in a team's file: the team's `price` covers its models."""

    @field_validator("ctx_size")
    @classmethod
    def _usable_context(cls, value: int) -> int:
        if 0 < value < 256:
            raise ValueError(f"expected 0 (the model's own context) or at least 256 tokens, got {value}")
        return value

    @property
    def most_replicas(self) -> int:
        return most_replicas(self)

    @model_validator(mode="after")
    def _one_way_to_size(self) -> "ModelConfig":
        _replicas_or_autoscaling(self)
        return self

    @property
    def download_url(self) -> Optional[str]:
        if self.url:
            return self.url
        if self.hf_repo:
            return f"https://huggingface.co/{self.hf_repo}/resolve/main/{self.file}"
        return None


class VllmResources(Resources):
    """CPU and memory of a vLLM server's pod: requests and limits."""

    cpu: Quantity = "4"
    """CPU request."""
    memory: Quantity = "16Gi"
    """Memory request."""
    cpu_limit: Quantity = "8"
    """CPU limit."""
    memory_limit: Quantity = "24Gi"
    """Memory limit."""


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
GI = 2**30


def quantity_bytes(value: str) -> int:
    """Bytes of a storage quantity such as '140Gi' or '150G'."""
    m = re.match(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$", value)
    assert m, f"not a storage quantity: {value!r}"  # Storage fields (and sizes derived from them) only
    return int(float(m[1]) * _UNITS[m[2]])


def _storage(value: str) -> str:
    """a size such as `140Gi` or `150G`"""
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
    """The alias clients send as `"model"`; unique among the stack's models."""
    runtime: Literal["vllm"]
    """`vllm`: vLLM serves a Hugging Face model (accelerator `nvidia` or `tpu`)."""
    hf_model: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    """The Hugging Face model id; a gated one needs the `hfToken` secret."""
    max_model_len: int = Field(8192, ge=256)
    """Tokens of context (`--max-model-len`)."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """NVIDIA only: the share of GPU memory vLLM may take."""
    accelerators: Optional[int] = Field(None, ge=1)
    """Accelerators per replica (= `--tensor-parallel-size`), at most a node's. Default: 1 GPU, or
    every TPU chip of a host (on TPUs it must be all of them)."""
    replicas: int = Field(1, ge=0)
    """Pods serving the model, each on its own accelerators and cache; not with
    `autoscaling.enabled`."""
    autoscaling: Autoscaling = Autoscaling()
    """Off by default: replicas by the server's queue (KEDA), see docs/autoscaling.md."""
    weights_size: Optional[Storage] = None
    """Size of the weights as downloaded (e.g. `140Gi` for a 70B model in bf16): sizes the cache
    and the startup budget."""
    cache_size: Optional[Storage] = None
    """The volume each replica caches the weights on, at least 10Gi and no smaller than
    `weightsSize`. Default: `weightsSize` + 20% + 10Gi, or 100Gi when the weights' size is not
    stated. A new size replaces the server (see "Growing a cache" in docs/cloud-stacks.md)."""
    resources: VllmResources = VllmResources()
    """CPU and memory of each pod."""
    image: Optional[Image] = None
    """The server's image; none: the pinned vLLM image for the accelerator."""
    extra_args: Annotated[list[str], AfterValidator(_no_key_flags("--api-key", "--config"))] = []
    """Further `vllm serve` arguments."""
    price: Optional[Price] = None
    """What its tokens cost (US dollars per million); none: the front door counts no spend for it.
    Not in a team's file: the team's `price` covers its models."""

    @property
    def most_replicas(self) -> int:
        return most_replicas(self)

    @property
    def cache(self) -> str:
        if self.cache_size:
            return self.cache_size
        return cache_for(self.weights_size) if self.weights_size else DEFAULT_CACHE

    @model_validator(mode="after")
    def _cache_holds_the_weights(self) -> "VllmModel":
        _replicas_or_autoscaling(self)
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
# A model of either runtime, for annotations (AnyModel is the same union as pydantic parses it).
ServedModel = Union[ModelConfig, VllmModel]
RUNTIMES = ("llama-cpp", "vllm")

DEFAULT_MODEL = ModelConfig(
    name="tinyllama",
    file="tinyllama-1.1b-chat-v1.0.Q8_0.gguf",
    hf_repo="TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
)
# A small public model that fits one L4 GPU or one TPU v5e host.
DEFAULT_VLLM_MODEL = VllmModel(name="qwen", runtime="vllm", hf_model="Qwen/Qwen2.5-1.5B-Instruct")
