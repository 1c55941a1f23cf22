"""Every flag and env var the vLLM servers get exists in the pinned vLLM release's own sources,
and the arguments parse as `vllm serve` parses them.

The wheel of the release the image tag names is read, not imported (that would need torch):
see tools/vllm_wheel.py, which rebuilds `vllm serve`'s argparse parser from it (each flag's
choices, booleans, numbers and lists by the rules of vLLM's own `_compute_kwargs`). A misspelt
flag, a value outside a flag's choices, a value after a boolean flag, a value of the wrong type,
or an env var vLLM does not know fails here instead of in a CrashLoopBackOff on a GPU node.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from components.serving.runtimes import VLLM_RELEASE
from tools import mock_engine as harness
from tools import vllm_wheel

# Variables the pods set that vLLM's own table does not list, and who reads them.
OTHER_READERS = {
    "HF_HOME": "huggingface_hub: where the weights cache lives",
    "HF_TOKEN": "huggingface_hub: the token for gated models",
    "HOME": "everything that writes under ~ (the root filesystem is read-only)",
    "USER": "getpass.getuser() (torch), the pod's uid has no passwd entry",
    "LOGNAME": "getpass.getuser(), checked before USER",
}
VLLM_STACKS = {"eks": "nvidia", "gke": "tpu"}


def _version(image: str) -> str:
    return image.rsplit(":", 1)[1].removeprefix("v")


@pytest.fixture(scope="module")
def servers():
    """Each vLLM runtime's container (and its config file) as the program renders it, with an
    HF token so that its env var is rendered too."""
    out = {}
    for stack in VLLM_STACKS:
        rec = harness.run(stack, {"llm-platform:hfToken": "hf_test"}, secrets=("llm-platform:hfToken",))
        template = harness.reveal(rec.one("kubernetes:apps/v1:StatefulSet").inputs["spec"]["template"])
        secret = next(r for r in rec.of_type("kubernetes:core/v1:Secret") if r.name.endswith("-api-keys"))
        out[stack] = (template["spec"]["containers"][0], harness.reveal(secret.inputs["stringData"]))
    return out


@pytest.fixture(scope="module")
def wheel(servers):
    versions = {_version(c["image"]) for c, _ in servers.values()}
    assert versions == {VLLM_RELEASE}, f"both vLLM images run one release: {versions}"
    try:
        return vllm_wheel.fetch(VLLM_RELEASE)
    except subprocess.CalledProcessError:
        pytest.skip(f"vllm=={VLLM_RELEASE} wheel not cached in {vllm_wheel.WHEEL_DIR} and not downloadable")


@pytest.fixture(scope="module")
def cli(wheel):
    return vllm_wheel.read(wheel)


@pytest.fixture(scope="module")
def serve(wheel) -> dict:
    """`vllm serve`'s options, as the pinned release's parser takes them."""
    return vllm_wheel.serve_flags(wheel)


def _flag_values(args: list[str]) -> list[tuple[str, list[str]]]:
    """(flag, values) pairs of a `vllm serve` argument list, after the positional model."""
    pairs = []
    for arg in args:
        if arg.startswith("-"):
            pairs.append((arg.split("=", 1)[0], [arg.split("=", 1)[1]] if "=" in arg else []))
        else:
            assert pairs, f"only the model comes before the flags, got {arg!r}"
            pairs[-1][1].append(arg)
    return pairs


def _config(container: dict, data: dict) -> dict:
    path = container["args"][container["args"].index("--config") + 1]
    assert path.endswith(".yaml"), path
    return yaml.safe_load(data[path.rsplit("/", 1)[1]])


def parse(serve: dict, container: dict, data: dict):
    """The container's arguments and its config file, parsed as `vllm serve` would."""
    return vllm_wheel.parse_serve_args(serve, container["args"], _config(container, data))


@pytest.mark.parametrize("stack", VLLM_STACKS)
def test_every_flag_exists_and_the_arguments_parse(servers, cli, serve, stack):
    container, data = servers[stack]
    args = container["args"]
    assert container.get("command") in (None, ["vllm", "serve"])  # the image's entrypoint is `vllm serve`
    assert not args[0].startswith("-"), "vllm serve takes the model first"
    pairs = _flag_values(args[1:])
    assert pairs
    for flag, _ in pairs:
        assert flag in cli.flags and flag in serve, f"vllm {VLLM_RELEASE} has no {flag}"
    parsed = parse(serve, container, data)
    # What the program means reached vLLM: the model, its alias, the port the probes use.
    assert parsed.model_tag == args[0]
    assert parsed.served_model_name == [args[args.index("--served-model-name") + 1]]
    assert parsed.port == int(args[args.index("--port") + 1])


@pytest.mark.parametrize("stack", VLLM_STACKS)
def test_the_config_file_holds_only_flags_vllm_knows(servers, cli, serve, stack):
    container, data = servers[stack]
    config = _config(container, data)
    assert config
    for key in config:
        assert f"--{key}" in cli.flags and f"--{key}" in serve, f"vllm {VLLM_RELEASE} has no --{key}"
    # A YAML value keeps its type: a list stays a list, even of one key (vLLM's config loader
    # turns it into the flag followed by each item).
    parsed = parse(serve, container, data)
    assert parsed.api_key == config["api-key"]


@pytest.mark.parametrize("stack", VLLM_STACKS)
def test_every_env_var_is_read_by_vllm_or_named_here(servers, cli, stack):
    container, _ = servers[stack]
    for name in (e["name"] for e in container["env"]):
        if name.startswith("VLLM_"):
            assert name in cli.env_vars, f"vllm {VLLM_RELEASE} reads no {name}"
        else:
            assert name in OTHER_READERS, f"{name}: who reads it?"


def _refused(serve, args: list[str]) -> str:
    with pytest.raises(vllm_wheel.VllmArgsError) as info:
        vllm_wheel.parse_serve_args(serve, ["Qwen/Qwen2.5-1.5B-Instruct", *args])
    return str(info.value)


def test_the_parser_refuses_what_vllm_refuses(cli, serve):
    """The parser rebuilt from the wheel refuses what vLLM would: an unknown flag, a value of
    the wrong type, one outside a flag's choices, a value after a boolean flag."""
    assert "--tensor-parallel-sizes" in _refused(serve, ["--tensor-parallel-sizes", "1"])
    assert "--max-model-len" in _refused(serve, ["--max-model-len", "8k-tokens"])
    assert "--gpu-memory-utilization" in _refused(serve, ["--gpu-memory-utilization", "most"])
    assert "invalid choice: 'fp9'" in _refused(serve, ["--kv-cache-dtype", "fp9"])
    assert "unrecognized arguments: true" in _refused(serve, ["--enforce-eager", "true"])
    assert "--enforce-eager" in _refused(serve, ["--enforce-eager=true"])
    assert "invalid choice" in _refused(serve, ["--dtype", "bf16"])
    assert "VLLM_XLA_CACHE_PATHS" not in cli.env_vars and "VLLM_XLA_CACHE_PATH" in cli.env_vars
    # ...and takes what vLLM takes: its spellings, sizes, booleans and their --no- forms.
    ok = vllm_wheel.parse_serve_args(serve, [
        "Qwen/Qwen2.5-1.5B-Instruct", "--kv-cache-dtype", "fp8", "--enforce-eager", "--no-enable-prefix-caching",
        "--max_num_seqs", "8", "--max-num-batched-tokens", "8k", "--max-model-len", "auto", "--dtype", "bfloat16"])
    assert (ok.kv_cache_dtype, ok.enforce_eager, ok.enable_prefix_caching) == ("fp8", True, False)
    assert (ok.max_num_seqs, ok.max_num_batched_tokens, ok.max_model_len) == (8, 8000, -1)


def test_bad_extra_args_in_the_stack_are_caught(serve):
    """`extraArgs` reach vLLM as they are: a model whose extra arguments vLLM 0.29.0 would
    refuse at start fails here, for each of them."""
    model = {**harness.stack_config("eks")["llm-platform:models"][0],
             "extraArgs": ["--kv-cache-dtype", "fp9", "--enforce-eager", "true"]}
    rec = harness.run("eks", {"llm-platform:models": [model]})
    template = harness.reveal(rec.one("kubernetes:apps/v1:StatefulSet").inputs["spec"]["template"])
    secret = next(r for r in rec.of_type("kubernetes:core/v1:Secret") if r.name.endswith("-api-keys"))
    container, data = template["spec"]["containers"][0], harness.reveal(secret.inputs["stringData"])
    with pytest.raises(vllm_wheel.VllmArgsError, match="fp9"):
        parse(serve, container, data)
    container["args"] = [a for a in container["args"] if a not in ("--kv-cache-dtype", "fp9")]
    with pytest.raises(vllm_wheel.VllmArgsError, match="unrecognized arguments: true"):
        parse(serve, container, data)


def test_the_queue_autoscaling_reads_is_a_gauge_vllm_reports(cli):
    """KEDA sizes vLLM servers on the queue and keeps one at zero awake while it generates: both
    must be metrics the release declares, as gauges."""
    from components.serving.autoscaling import QUEUE_METRIC, RUNNING_METRIC

    reported = vllm_wheel.gauges(vllm_wheel.wheel_path(VLLM_RELEASE))
    assert "vllm:num_requests_running" in reported  # the reading works at all
    assert QUEUE_METRIC["vllm"] in reported and RUNNING_METRIC["vllm"] in reported
