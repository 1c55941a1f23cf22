"""The gke stack's Kubernetes layer for real: vLLM on every chip of a TPU host (GKE runs the
device plugin), as `cluster.kind: existing` on nodes shaped like the stack's pools. The cloud's own
cluster layer stays on the mock engine (tests/program/test_cloud_stacks.py)."""

from __future__ import annotations

import pytest

from tests.engine.lifecycle import settled_pods, summary_without_same
from tests.engine.conftest import deployed

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def gke(tmp_path_factory, charts_dir):
    yield from deployed(tmp_path_factory, charts_dir, "gke")


def test_gke_up_puts_vllm_on_every_chip_of_the_tpu_host(gke):
    w, stack = gke
    up = stack.up()
    assert up.summary.result == "succeeded", stack.tail()
    pods = settled_pods(w, "models", "qwen-")
    assert [p.spec.node_name for p in pods] == ["tpu-0"]
    assert pods[0].spec.containers[0].resources.limits.get("google.com/tpu") == "4"
    assert summary_without_same(stack.preview().change_summary) == {}, stack.tail()
    assert stack.destroy().summary.result == "succeeded", stack.tail()
