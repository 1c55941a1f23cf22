"""Property: whatever the stack file holds, the config parser either accepts it or refuses it with
one line naming the file and the key: never a traceback. (Through the program, never a resource
registered first: tests/program/test_config_fuzz.py.)"""

import copy

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from components.config import PROJECT, ConfigError, display_key, parse
from tools import mock_engine as harness

STACK_FILE = "Pulumi.fuzz.yaml"
BASES = [
    {k.split(":", 1)[1]: v for k, v in harness.stack_config(stack).items()} for stack in harness.STACKS
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**7), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12), st.sampled_from(["", "latest", "v1.34.0", "1.33", "Tiny_Llama", "-1", "nvidia",
                                           "tpu", "vulkan", "none", "vllm", "llama-cpp", "eks", "gke",
                                           "minikube", "existing", "g6.xlarge", "ct5lp-hightpu-4t", "4Gi"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=6)


def paths(node, prefix=()):
    """Every place in a config that a mutation can touch."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, prefix + (i,))


@st.composite
def stack_configs(draw):
    raw = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(list(paths(raw))))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        parent = raw
        for step in where[:-1]:
            parent = parent[step]
        if not where:
            if action == "add":
                raw[draw(st.text(min_size=1, max_size=10))] = draw(values)
            continue
        key = where[-1]
        if action == "replace":
            parent[key] = draw(values)
        elif action == "delete":
            del parent[key]
        elif isinstance(parent[key], dict):
            parent[key][draw(st.text(min_size=1, max_size=10))] = draw(values)
        elif isinstance(parent[key], list):
            parent[key].append(draw(values))
    return raw


def check_refusal(message: str, raw: dict) -> None:
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"{STACK_FILE}: {PROJECT}:"), message
    rest = message[len(f"{STACK_FILE}: {PROJECT}:"):]
    # The key named is one the file has, or the required one it lacks.
    named = [display_key(k) for k in raw] + ["cluster"]
    assert any(rest.startswith(k) and rest[len(k)] in ".[:" for k in named), message


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stack_configs())
def test_every_config_is_accepted_or_refused_in_one_line(raw):
    try:
        parse(raw, STACK_FILE)
        event("accepted")
    except ConfigError as err:
        event("refused")
        check_refusal(str(err), raw)
