"""The one table of model-server runtimes: (runtime, accelerator) -> image, command and flags.

LlmServer builds its pod from what this returns, so a new accelerator or runtime is a new row
here rather than an `if` inside a component.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from .accelerators import Accelerator
from .config import ModelConfig

MODELS_MOUNT = "/mnt/models"
# llama.cpp's default port is moving (8080 -> 9931): always pass it explicitly.
LLAMA_CPP_PORT = 8080
# -ngl larger than any model's layer count: every layer goes to the GPU.
ALL_LAYERS = 999


@dataclass(frozen=True)
class ServerSpec:
    image: str
    command: Optional[list[str]]
    args: list[str]
    port: int
    health_path: str = "/health"


@dataclass(frozen=True)
class _Runtime:
    image: str
    # None: the image's entrypoint is already the server; pass flags only.
    command: Optional[list[str]]
    build_args: Callable[[ModelConfig, Accelerator], list[str]]
    port: int


def _llama_cpp_args(model: ModelConfig, accel: Accelerator) -> list[str]:
    args = [
        "--host", "0.0.0.0",
        "--port", str(LLAMA_CPP_PORT),
        "-m", model_path(model),
        "--alias", model.name,
        "--ctx-size", str(model.ctx_size),
    ]
    if accel.resource:
        args += ["-ngl", str(ALL_LAYERS)]
    return args + list(model.extra_args)


RUNTIMES: dict[tuple[str, str], _Runtime] = {
    # RamaLama's image carries the Vulkan build of llama.cpp with the Mesa that krunkit's
    # GPU passthrough needs.
    ("llama-cpp", "vulkan"): _Runtime(
        image="quay.io/ramalama/ramalama:0.24",
        command=["llama-server"],
        build_args=_llama_cpp_args,
        port=LLAMA_CPP_PORT,
    ),
    ("llama-cpp", "none"): _Runtime(
        image="ghcr.io/ggml-org/llama.cpp:server-b7000",
        command=None,
        build_args=_llama_cpp_args,
        port=LLAMA_CPP_PORT,
    ),
}


def model_path(model: ModelConfig) -> str:
    return f"{MODELS_MOUNT}/{model.file}"


def supported() -> list[tuple[str, str]]:
    return sorted(RUNTIMES)


def server_spec(model: ModelConfig, accel: Accelerator) -> ServerSpec:
    runtime = RUNTIMES.get((model.runtime, accel.kind))
    if runtime is None:
        raise KeyError(f"no model server for runtime {model.runtime!r} on accelerator {accel.kind!r}")
    return ServerSpec(
        image=model.image or runtime.image,
        command=runtime.command,
        args=runtime.build_args(model, accel),
        port=runtime.port,
    )
