"""Property, through the real program: a config the parser refuses registers nothing and fails in
one line; one it accepts runs. The configs are those of tests/unit/test_config_fuzz.py."""

import json
import os

import pulumi
from hypothesis import HealthCheck, given, settings

from components.config import PROJECT, ConfigError, parse
from tests.unit.test_config_fuzz import STACK_FILE, stack_configs
from tools import mock_engine as harness


@settings(max_examples=int(os.environ.get("FUZZ_PROGRAM_EXAMPLES", "40")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stack_configs())
def test_program_registers_nothing_before_refusing(raw):
    """Through the real program: refused configs register nothing; accepted ones run."""
    cluster = raw.get("cluster")
    kind = cluster.get("kind") if isinstance(cluster, dict) else None
    stack = kind if kind in ("eks", "gke") else "local"
    overrides = {f"{PROJECT}:{k}": v for k, v in raw.items()}
    base_keys = tuple(k for k in harness.stack_config(stack) if k not in overrides)
    try:
        accepted = parse(json.loads(json.dumps(raw)), STACK_FILE)
    except ConfigError:
        accepted = None
    try:
        rec = harness.run(stack, overrides, remove=base_keys)
    except harness.ProgramFailed as failed:
        assert accepted is None, f"a config that parses was refused: {failed.error}"
        assert isinstance(failed.error, pulumi.RunError), repr(failed.error)
        assert failed.registrations == []
        assert "\n" not in str(failed.error)
    else:
        assert accepted is not None and rec.registrations
