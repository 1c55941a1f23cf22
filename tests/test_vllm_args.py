"""Every flag and env var the vLLM servers get exists in the pinned vLLM release's own sources.

The wheel of the release the image tag names is read, not imported (that would need torch):
see tools/vllm_wheel.py. A misspelt flag, a value of the wrong type, or an env var vLLM does not
know fails here instead of in a CrashLoopBackOff on a GPU node.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from components.serving import VLLM_RELEASE
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
def cli(servers):
    versions = {_version(c["image"]) for c, _ in servers.values()}
    assert versions == {VLLM_RELEASE}, f"both vLLM images run one release: {versions}"
    try:
        wheel = vllm_wheel.fetch(VLLM_RELEASE)
    except subprocess.CalledProcessError:
        pytest.skip(f"vllm=={VLLM_RELEASE} wheel not cached in {vllm_wheel.WHEEL_DIR} and not downloadable")
    return vllm_wheel.read(wheel)


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


def _check(cli, flag: str, values: list) -> None:
    assert flag in cli.flags, f"vllm {VLLM_RELEASE} has no {flag}"
    error = cli.value_error(flag, values if len(values) != 1 else values[0])
    assert error is None, error


@pytest.mark.parametrize("stack", VLLM_STACKS)
def test_every_flag_exists_and_takes_its_value(servers, cli, stack):
    container, _ = servers[stack]
    args = container["args"]
    assert container.get("command") in (None, ["vllm", "serve"])  # the image's entrypoint is `vllm serve`
    assert not args[0].startswith("-"), "vllm serve takes the model first"
    pairs = _flag_values(args[1:])
    assert pairs
    for flag, values in pairs:
        _check(cli, flag, values)


@pytest.mark.parametrize("stack", VLLM_STACKS)
def test_the_config_file_holds_only_flags_vllm_knows(servers, cli, stack):
    container, data = servers[stack]
    path = container["args"][container["args"].index("--config") + 1]
    config = yaml.safe_load(data[path.rsplit("/", 1)[1]])
    assert path.endswith(".yaml") and config
    for key, value in config.items():
        flag = f"--{key}"
        assert flag in cli.flags, f"vllm {VLLM_RELEASE} has no {flag}"
        # A YAML value keeps its type: a list stays a list, even of one key (vLLM's config
        # loader turns it into the flag followed by each item).
        error = cli.value_error(flag, value)
        assert error is None, error


@pytest.mark.parametrize("stack", VLLM_STACKS)
def test_every_env_var_is_read_by_vllm_or_named_here(servers, cli, stack):
    container, _ = servers[stack]
    for name in (e["name"] for e in container["env"]):
        if name.startswith("VLLM_"):
            assert name in cli.env_vars, f"vllm {VLLM_RELEASE} reads no {name}"
        else:
            assert name in OTHER_READERS, f"{name}: who reads it?"


def test_the_check_bites(cli):
    """The parser read from the wheel refuses what vLLM would."""
    with pytest.raises(AssertionError, match="no --tensor-parallel-sizes"):
        _check(cli, "--tensor-parallel-sizes", ["1"])
    with pytest.raises(AssertionError, match="takes int"):
        _check(cli, "--max-model-len", ["8k-tokens"])
    with pytest.raises(AssertionError, match="takes float"):
        _check(cli, "--gpu-memory-utilization", ["most"])
    assert "VLLM_XLA_CACHE_PATHS" not in cli.env_vars and "VLLM_XLA_CACHE_PATH" in cli.env_vars


def test_the_queue_autoscaling_reads_is_a_gauge_vllm_reports(cli):
    """KEDA sizes vLLM servers on the queue and keeps one at zero awake while it generates: both
    must be metrics the release declares, as gauges."""
    from components.autoscaling import QUEUE_METRIC, RUNNING_METRIC

    reported = vllm_wheel.gauges(vllm_wheel.wheel_path(VLLM_RELEASE))
    assert "vllm:num_requests_running" in reported  # the reading works at all
    assert QUEUE_METRIC["vllm"] in reported and RUNNING_METRIC["vllm"] in reported
