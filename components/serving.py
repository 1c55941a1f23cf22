"""The one table of model-server runtimes: (runtime, accelerator) -> image, command, flags,
environment and volumes. LlmServer builds its pod from what this returns, so a new accelerator
or runtime is a new row here rather than an `if` inside a component.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from .accelerators import Accelerator

MODELS_MOUNT = "/mnt/models"
CACHE_MOUNT = "/data"
API_KEYS_MOUNT = "/etc/llm-platform/api-keys"
# Keys of the API-key Secret each model server reads.
API_KEY_ENTRIES = ("client", "ui")
# llama.cpp's default port is moving (8080 -> 9931): always pass it explicitly.
LLAMA_CPP_PORT = 8080
VLLM_PORT = 8000
# -ngl larger than any model's layer count: every layer goes to the GPU.
ALL_LAYERS = 999


@dataclass(frozen=True)
class ServerSpec:
    image: str
    command: Optional[list[str]]
    args: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    # "host": GGUF files from the host folder at /mnt/models; "cache": a PVC at /data.
    model_store: str = "host"
    shared_memory: bool = False
    # How long the slowest load may take before the startup probe gives up.
    startup_minutes: int = 30
    accelerators: int = 0
    health_path: str = "/health"
    # How the server reads its API keys: "file" (the Secret mounted at API_KEYS_MOUNT) or
    # "env" (the Secret's entries as env vars, expanded by the kubelet into the args).
    api_keys_from: Optional[str] = None


@dataclass(frozen=True)
class _Runtime:
    image: str
    # None: the image's entrypoint is already the server; pass flags only.
    command: Optional[list[str]]
    build_args: Callable[..., list[str]]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    model_store: str = "host"
    shared_memory: bool = False
    startup_minutes: int = 30
    api_keys_from: str = "env"


def api_key_env(entry: str) -> str:
    return f"API_KEY_{entry.upper()}"


def _api_key_args(api_keys_from: str) -> list[str]:
    # Never the keys themselves: a file path, or $(VAR) references the kubelet fills in.
    if api_keys_from == "file":
        return ["--api-key-file", f"{API_KEYS_MOUNT}/keys"]
    return ["--api-key", *(f"$({api_key_env(e)})" for e in API_KEY_ENTRIES)]


def model_path(model) -> str:
    return f"{MODELS_MOUNT}/{model.file}"


def _llama_cpp_args(model, accel: Accelerator, units: int) -> list[str]:
    args = [
        "--host", "0.0.0.0",
        "--port", str(LLAMA_CPP_PORT),
        "-m", model_path(model),
        "--alias", model.name,
        "--ctx-size", str(model.ctx_size),
        # Prometheus /metrics, for in-cluster scraping (the gateway does not route it).
        "--metrics",
    ]
    if accel.resource:
        args += ["-ngl", str(ALL_LAYERS)]
    return args


def _vllm_args(model, accel: Accelerator, units: int) -> list[str]:
    args = [
        model.hf_model,
        "--served-model-name", model.name,
        "--host", "0.0.0.0",
        "--port", str(VLLM_PORT),
        "--max-model-len", str(model.max_model_len),
        "--tensor-parallel-size", str(units),
        "--download-dir", f"{CACHE_MOUNT}/hf/hub",
    ]
    if accel.kind == "nvidia":
        args += ["--gpu-memory-utilization", str(model.gpu_memory_utilization)]
    return args


_VLLM_ENV = {"HF_HOME": f"{CACHE_MOUNT}/hf"}

RUNTIMES: dict[tuple[str, str], _Runtime] = {
    # RamaLama's image carries the Vulkan build of llama.cpp with the Mesa that krunkit's
    # GPU passthrough needs.
    ("llama-cpp", "vulkan"): _Runtime(
        image="quay.io/ramalama/ramalama:0.24", command=["llama-server"],
        build_args=_llama_cpp_args, port=LLAMA_CPP_PORT, api_keys_from="file",
    ),
    ("llama-cpp", "none"): _Runtime(
        image="ghcr.io/ggml-org/llama.cpp:server-b7000", command=None,
        build_args=_llama_cpp_args, port=LLAMA_CPP_PORT, api_keys_from="file",
    ),
    # Entrypoint is `vllm serve`: args start with the model.
    ("vllm", "nvidia"): _Runtime(
        image="vllm/vllm-openai:v0.18.2", command=None,
        build_args=_vllm_args, port=VLLM_PORT, env=_VLLM_ENV,
        model_store="cache", shared_memory=True, startup_minutes=60,
    ),
    ("vllm", "tpu"): _Runtime(
        image="vllm/vllm-tpu:nightly-20260626-c539adc-cc79815", command=["vllm", "serve"],
        build_args=_vllm_args, port=VLLM_PORT,
        env={**_VLLM_ENV, "PJRT_DEVICE": "TPU", "VLLM_XLA_CACHE_PATH": f"{CACHE_MOUNT}/xla"},
        # XLA compiles every shape on first start: allow for download plus compilation.
        model_store="cache", shared_memory=True, startup_minutes=90,
    ),
}


def server_spec(model, accel: Accelerator, api_auth: bool = False) -> ServerSpec:
    runtime = RUNTIMES[(model.runtime, accel.kind)]
    units = accel.units(getattr(model, "accelerators", None))
    auth = _api_key_args(runtime.api_keys_from) if api_auth else []
    args = runtime.build_args(model, accel, units) + auth + list(model.extra_args)
    return ServerSpec(
        image=model.image or runtime.image,
        command=runtime.command,
        args=args,
        api_keys_from=runtime.api_keys_from if api_auth else None,
        port=runtime.port,
        env=dict(runtime.env),
        model_store=runtime.model_store,
        shared_memory=runtime.shared_memory,
        startup_minutes=runtime.startup_minutes,
        accelerators=units,
    )


def uses_model_cache(model, accel: Accelerator) -> bool:
    """Whether the server downloads weights into a cache (and so needs HTTPS out)."""
    return RUNTIMES[(model.runtime, accel.kind)].model_store == "cache"
