"""The one table of model-server runtimes: (runtime, accelerator) -> image, command, flags,
environment and volumes. LlmServer builds its pod from what this returns, so a new accelerator
or runtime is a new row here rather than an `if` inside a component.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from components.cluster.accelerators import Accelerator
from components.core.names import MODELS_MOUNT  # noqa: F401  (the servers' mount of it)

if TYPE_CHECKING:
    from components.config import ModelConfig, ServedModel, VllmModel

CACHE_MOUNT = "/data"
API_KEYS_MOUNT = "/etc/llm-platform/api-keys"
# Keys of the API-key Secret each model server reads: the front door's; the stack's client key,
# which the ingress passes on with the requests it routes straight to a server; and on llama.cpp
# (which asks a key for /metrics too) the scraper's, so the front door's key stays with the front
# door.
FRONT_DOOR_KEY = "front-door"
CLIENT_KEY = "client"
METRICS_KEY = "metrics"
# A team's own key, which only the team's servers accept.
TEAM_KEY = "team"
API_KEY_ENTRIES = (FRONT_DOOR_KEY, CLIENT_KEY, METRICS_KEY, TEAM_KEY)
# Entries of that Secret the servers read as files: llama.cpp's key list (one key a line) and
# vLLM's config file (`--config`, YAML), which carries `api-key` so no key reaches argv or env.
API_KEYS_FILE = "keys"
VLLM_CONFIG_FILE = "serve.yaml"

# Shutdown: the pod gets TERMINATION_GRACE_S; its preStop first keeps serving PRESTOP_SLEEP_S
# while the endpoints are removed, then the server may finish what is in flight for up to
# DRAIN_S, leaving a margin before the kubelet's SIGKILL.
TERMINATION_GRACE_S = 180
PRESTOP_SLEEP_S = 15
DRAIN_S = TERMINATION_GRACE_S - PRESTOP_SLEEP_S - 10

# llama.cpp stops generations in flight on SIGTERM, so its preStop waits until the server says
# it processes and defers no request (Prometheus /metrics, which `--metrics` enables). POSIX sh
# and curl, both in the ggml-org and RamaLama images. The key goes to curl on stdin (`-K -`),
# never on a command line. Arguments: pause, port, key file, drain bound (seconds). Only a
# /metrics that answers and shows nothing in flight ends the wait early: one that refuses (the
# mounted key rotated since the server read it at start) or fails says nothing, so the hook
# waits out the bound rather than cut a generation.
LLAMA_CPP_DRAIN = r"""
sleep "$1"
end=$(( $(date +%s) + $4 ))
while [ "$(date +%s)" -lt "$end" ]; do
  key=""; [ -r "$3" ] && key=$(head -n 1 "$3")
  if m=$(printf 'header = "Authorization: Bearer %s"\n' "$key" |
         curl -sf -m 5 -K - "http://127.0.0.1:$2/metrics"); then
    printf '%s\n' "$m" | grep -Eq '^llamacpp:requests_(processing|deferred) 0*[1-9]' || exit 0
  fi
  sleep 1
done
"""
# The same wait for llama.cpp's router, model by model: the router answers /metrics only for
# one model (`?model=`), and `autoload=false` keeps the check from loading an idle one (it is
# refused as "not loaded", so nothing of it is in flight). A model still loading has a request
# waiting for it, so any "loading" in the router's model list counts as busy. Arguments: pause,
# port, key file, drain bound (seconds), then every model alias.
LLAMA_ROUTER_DRAIN = r"""
sleep "$1"; port=$2; keys=$3; end=$(( $(date +%s) + $4 )); shift 4
while [ "$(date +%s)" -lt "$end" ]; do
  key=""; [ -r "$keys" ] && key=$(head -n 1 "$keys")
  busy=""
  if list=$(printf 'header = "Authorization: Bearer %s"\n' "$key" |
            curl -sf -m 5 -K - "http://127.0.0.1:$port/models"); then
    case $list in *'"value":"loading"'*) busy=1 ;; esac
  else
    busy=1
  fi
  for model in "$@"; do
    [ -n "$busy" ] && break
    m=$(printf 'header = "Authorization: Bearer %s"\n' "$key" |
        curl -s -m 5 -K - -w '\n%{http_code}' "http://127.0.0.1:$port/metrics?model=$model&autoload=false") || busy=1
    case $(printf '%s\n' "$m" | tail -n 1) in
      200) printf '%s\n' "$m" | grep -Eq '^llamacpp:requests_(processing|deferred) 0*[1-9]' && busy=1 ;;
      400) case $m in *"not loaded"*) ;; *) busy=1 ;; esac ;;
      *) busy=1 ;;
    esac
  done
  [ -z "$busy" ] && exit 0
  sleep 1
done
"""
# llama.cpp's default port is moving (8080 -> 9931): always pass it explicitly.
LLAMA_CPP_PORT = 8080
VLLM_PORT = 8000
# Prometheus metrics of both servers (llama.cpp with --metrics).
METRICS_PATH = "/metrics"
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
    # The Secret entry the server reads its API keys from, mounted under API_KEYS_MOUNT.
    api_keys_file: Optional[str] = None
    # The container's preStop handler.
    pre_stop: dict = field(default_factory=dict)
    # Whether /metrics wants the API key too (llama.cpp guards every path but /health; vLLM's
    # key guards /v1 only).
    metrics_need_key: bool = False


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
    api_keys_file: str = VLLM_CONFIG_FILE
    pre_stop: Callable[[int], dict] = lambda port: {"sleep": {"seconds": PRESTOP_SLEEP_S}}
    metrics_need_key: bool = False


def _api_key_args(api_keys_file: str) -> list[str]:
    # Never the keys themselves: the path of the file that holds them.
    flag = "--api-key-file" if api_keys_file == API_KEYS_FILE else "--config"
    return [flag, f"{API_KEYS_MOUNT}/{api_keys_file}"]


def api_keys_file_content(api_keys_file: str, keys: list[str]) -> str:
    """What the server reads: one key a line, or vLLM's config file (JSON is YAML)."""
    if api_keys_file == API_KEYS_FILE:
        return "\n".join(keys)
    return json.dumps({"api-key": keys})


def _llama_cpp_pre_stop(port: int) -> dict:
    return {"exec": {"command": [
        "sh", "-c", LLAMA_CPP_DRAIN, "drain",
        str(PRESTOP_SLEEP_S), str(port), f"{API_KEYS_MOUNT}/{API_KEYS_FILE}", str(DRAIN_S),
    ]}}


def llama_router_pre_stop(port: int, aliases: Sequence[str]) -> dict:
    return {"exec": {"command": [
        "sh", "-c", LLAMA_ROUTER_DRAIN, "drain",
        str(PRESTOP_SLEEP_S), str(port), f"{API_KEYS_MOUNT}/{API_KEYS_FILE}", str(DRAIN_S), *aliases,
    ]}}


def model_path(model: ModelConfig) -> str:
    return f"{MODELS_MOUNT}/{model.file}"


def _llama_cpp_args(model: ModelConfig, accel: Accelerator, units: int) -> list[str]:
    args = [
        "--host", "0.0.0.0",
        "--port", str(LLAMA_CPP_PORT),
        "-m", model_path(model),
        "--alias", model.name,
        # 0: the context the model was trained for (read from the GGUF file).
        "--ctx-size", str(model.ctx_size),
        # One compute thread per CPU of the limit, not per host core.
        "--threads", str(model.resources.threads),
        # Prometheus /metrics, for in-cluster scraping (the gateway does not route it) and the
        # preStop drain.
        "--metrics",
    ]
    if accel.resource:
        args += ["-ngl", str(ALL_LAYERS)]
    return args


def _vllm_args(model: VllmModel, accel: Accelerator, units: int) -> list[str]:
    args = [
        model.hf_model,
        "--served-model-name", model.name,
        "--host", "0.0.0.0",
        "--port", str(VLLM_PORT),
        "--max-model-len", str(model.max_model_len),
        "--tensor-parallel-size", str(units),
        "--download-dir", f"{CACHE_MOUNT}/hf/hub",
        # On SIGTERM, finish requests in flight (0, the default, aborts them).
        "--shutdown-timeout", str(DRAIN_S),
    ]
    if accel.kind == "nvidia":
        args += ["--gpu-memory-utilization", str(model.gpu_memory_utilization)]
    return args


# The release both vLLM images run: the first that redacts `api_key` (and `hf_token`) in its
# "non-default args" log line.
VLLM_RELEASE = "0.29.0"
# The llama.cpp build whose flags the suite runs against the real server.
LLAMA_CPP_BUILD = "b11434"

_VLLM_ENV = {
    "HF_HOME": f"{CACHE_MOUNT}/hf",
    # The pod's uid has no passwd entry: torch asks getpass.getuser(), which reads these first.
    "USER": "vllm", "LOGNAME": "vllm",
    "HOME": "/tmp",
}

RUNTIMES: dict[tuple[str, str], _Runtime] = {
    # RamaLama's image carries the Vulkan build of llama.cpp with the Mesa that krunkit's
    # GPU passthrough needs (RamaLama 0.24 builds llama.cpp b10485).
    ("llama-cpp", "vulkan"): _Runtime(
        image="quay.io/ramalama/ramalama:0.24", command=["llama-server"],
        build_args=_llama_cpp_args, port=LLAMA_CPP_PORT, api_keys_file=API_KEYS_FILE,
        pre_stop=_llama_cpp_pre_stop, metrics_need_key=True,
    ),
    ("llama-cpp", "none"): _Runtime(
        image=f"ghcr.io/ggml-org/llama.cpp:server-{LLAMA_CPP_BUILD}", command=None,
        build_args=_llama_cpp_args, port=LLAMA_CPP_PORT, api_keys_file=API_KEYS_FILE,
        pre_stop=_llama_cpp_pre_stop, metrics_need_key=True,
    ),
    # Entrypoint is `vllm serve`: args start with the model.
    ("vllm", "nvidia"): _Runtime(
        image=f"vllm/vllm-openai:v{VLLM_RELEASE}", command=None,
        build_args=_vllm_args, port=VLLM_PORT, env=_VLLM_ENV,
        model_store="cache", shared_memory=True, startup_minutes=60,
    ),
    ("vllm", "tpu"): _Runtime(
        image=f"vllm/vllm-tpu:v{VLLM_RELEASE}", command=["vllm", "serve"],
        build_args=_vllm_args, port=VLLM_PORT,
        env={**_VLLM_ENV, "VLLM_XLA_CACHE_PATH": f"{CACHE_MOUNT}/xla"},
        # XLA compiles every shape on first start: allow for download plus compilation.
        model_store="cache", shared_memory=True, startup_minutes=90,
    ),
}


def server_spec(model: ServedModel, accel: Accelerator, api_auth: bool = False) -> ServerSpec:
    runtime = RUNTIMES[(model.runtime, accel.kind)]
    units = accel.units(getattr(model, "accelerators", None))
    auth = _api_key_args(runtime.api_keys_file) if api_auth else []
    args = runtime.build_args(model, accel, units) + auth + list(model.extra_args)
    return ServerSpec(
        image=model.image or runtime.image,
        command=runtime.command,
        args=args,
        api_keys_file=runtime.api_keys_file if api_auth else None,
        pre_stop=runtime.pre_stop(runtime.port),
        port=runtime.port,
        env=dict(runtime.env),
        model_store=runtime.model_store,
        shared_memory=runtime.shared_memory,
        startup_minutes=runtime.startup_minutes,
        accelerators=units,
        metrics_need_key=runtime.metrics_need_key and api_auth,
    )


def uses_model_cache(model: ServedModel, accel: Accelerator) -> bool:
    """Whether the server downloads weights into a cache (and so needs HTTPS out)."""
    return RUNTIMES[(model.runtime, accel.kind)].model_store == "cache"
