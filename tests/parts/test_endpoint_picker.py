"""The Inference Extension's endpoint picker (EPP) for real, with the program's flags, plugin
configuration, pool spec and Role: a request goes to the replica whose vLLM reports the shorter
queue, and follows the queues when they change.

Real parts: EPP (the pinned release, built by `make setup`), a kube-apiserver holding the
InferencePool and its two pods (tests/envtest.py; no kubelet, so the pods' Running/Ready status and
IPs are written as a kubelet would), and Envoy asking EPP about each request and connecting to the
address it names. The two replicas are stand-ins on the pods' loopback addresses that publish
vLLM 0.29's series on `/metrics` (set by the test) and say who answered. EPP reads the API as a
user holding only `role_rules()`.
"""

from __future__ import annotations

import collections
import json
import time
import zipfile
from types import SimpleNamespace

import pytest

from components.edge import endpoint_picker as epp
from components.serving.runtimes import VLLM_RELEASE
from tests import edge_path as edge
from tests import epp_path
from tools import vllm_wheel

pytestmark = pytest.mark.skipif(bool(epp_path.missing()), reason=epp_path.missing() or "")

NAMESPACE = "models"
POOL = "chat-pool"
EPP_SERVICE = "chat-pool-epp"
EPP_USER = "endpoint-picker"
MODEL = "chat"
LABELS = {"app.kubernetes.io/name": "vllm-chat", "app.kubernetes.io/part-of": "llm-platform"}
# Pod name -> its IP: two replicas of one Deployment.
REPLICAS = {"chat-vllm-7d9f8-a1": "127.0.0.2", "chat-vllm-7d9f8-b2": "127.0.0.3"}
A, B = REPLICAS
REQUESTS = 20


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("epp-path")
    port = epp_path.free_port_on(*REPLICAS.values())
    pool = {"apiVersion": epp.POOL_API_VERSION, "kind": "InferencePool", "metadata": {"name": POOL},
            "spec": epp.inference_pool_spec(LABELS, port, EPP_SERVICE, epp.GRPC_PORT)}
    # The Role EPP's ServiceAccount would get, bound here to the user its certificate names.
    with epp_path.picked_pool(tmp, namespace=NAMESPACE, pool=pool, role_rules=epp.role_rules(), user=EPP_USER,
                              pods=REPLICAS, labels=LABELS, port=port, model=MODEL,
                              epp_args=epp.epp_args(POOL, NAMESPACE, "/config/plugins.yaml"),
                              config_files={"plugins.yaml": epp.plugins_config()}) as pool_path:
        with edge.Envoy(epp_path.bootstrap(pool_path.picker.port), tmp / "envoy") as envoy:
            yield SimpleNamespace(envoy=envoy, epp=pool_path.picker, replicas=pool_path.replicas)


def _load(path, loads: dict[str, tuple[int, int, float]]) -> None:
    epp_path.set_loads(path.epp, path.replicas, loads)


def _chat(path, text: str, headers=None) -> tuple[int, dict]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 8}
    status, raw, _ = edge.call(path.envoy.port, "POST", "/v1/chat/completions", body, headers=headers)
    return status, (json.loads(raw) if raw.startswith(b"{") else {"raw": raw.decode(errors="replace")})


def _served_by(path, tag: str) -> collections.Counter:
    """Who served REQUESTS chats, each with its own prompt (so no replica holds a prefix of the
    next one and the prefix-cache scorer stays neutral)."""
    served: collections.Counter = collections.Counter()
    for i in range(REQUESTS):
        status, body = _chat(path, f"{tag} request {i}: say hello.")
        assert status == 200, (body, path.epp.tail())
        served[body["served_by"]] += 1
    return served


def test_requests_go_to_the_replica_with_the_shorter_queue(path):
    """Same running batch and KV cache on both, a long queue on one: every request goes to the
    other (max-score picking is deterministic once the scores differ), and when the queues swap,
    so do the requests."""
    _load(path, {A: (20, 8, 0.5), B: (0, 8, 0.5)})
    assert _served_by(path, "first") == {B: REQUESTS}
    _load(path, {A: (0, 8, 0.5), B: (20, 8, 0.5)})
    assert _served_by(path, "swapped") == {A: REQUESTS}


def test_with_equal_queues_the_emptier_kv_cache_wins(path):
    _load(path, {A: (2, 4, 0.9), B: (2, 4, 0.1)})
    assert _served_by(path, "kv") == {B: REQUESTS}


def test_the_replica_gets_the_request_whole_at_the_picked_address(path):
    """EPP sends the body back to Envoy in chunks (full-duplex); the replica gets it byte for byte,
    with the header that named it."""
    _load(path, {A: (5, 1, 0.2), B: (0, 1, 0.2)})
    text = "whole body " + "x" * 70_000  # more than one of EPP's 62,000-byte body chunks
    status, body = _chat(path, text)
    assert status == 200 and body["served_by"] == B
    seen = path.replicas[B].seen[-1]
    assert json.loads(seen["body"])["messages"][0]["content"] == text
    assert seen["headers"][epp.ENDPOINT_HEADER] == path.replicas[B].address


def test_a_client_cannot_pick_the_replica(path):
    """A client's own ENDPOINT_HEADER is replaced by EPP's choice."""
    _load(path, {A: (20, 8, 0.5), B: (0, 8, 0.5)})
    status, body = _chat(path, "pick a", headers={epp.ENDPOINT_HEADER: path.replicas[A].address})
    assert status == 200 and body["served_by"] == B


def test_the_picker_reads_the_api_with_its_role_alone(path):
    """EPP ran as a user holding only `role_rules()` and found its pool and pods (the tests above);
    it was refused nothing on the way."""
    refused = [line for line in path.epp.log_lines() if "forbidden" in json.dumps(line).lower()]
    assert refused == []


def test_the_stand_ins_publish_vllms_own_series():
    """What the stand-ins publish is what the pinned vLLM declares (its wheel's metrics logger:
    the gauges by name, the cache configuration's info gauge by a name it builds at run time)."""
    wheel = vllm_wheel.wheel_path(VLLM_RELEASE)
    if wheel is None:
        pytest.skip(f"no vLLM {VLLM_RELEASE} wheel in {vllm_wheel.WHEEL_DIR}: `python -m tools.vllm_wheel`")
    assert {epp_path.VLLM_RUNNING, epp_path.VLLM_WAITING, epp_path.VLLM_KV_USAGE} <= vllm_wheel.gauges(wheel)
    with zipfile.ZipFile(wheel) as z:
        assert f'"{epp_path.VLLM_CACHE_INFO}"' in z.read(vllm_wheel.METRICS_MODULE).decode()


def test_every_series_the_picker_asks_for_is_there(path):
    """The series `plugins_config()` names are the ones the replicas publish (vLLM 0.29's): no
    scrape came back short of one."""
    failed = [line for line in path.epp.log_lines() if line.get("msg") == "extract failed"]
    assert failed == []


def test_without_the_picker_a_request_fails_at_once(tmp_path):
    """The pool says FailOpen, but this path cannot fail open to the pool's own balancing: once
    Envoy streams the body to EPP (full-duplex mode) it does not apply `failure_mode_allow` and
    answers 500; when the connection is refused before that, it does apply it, and without EPP's
    header the original-destination cluster has no address to go to: 503, no healthy upstream
    (epp_path.PICKER_AWAY). What it does is fail at once, never hang and never reach a replica
    nobody picked."""
    with edge.refusing_port() as away, edge.Envoy(epp_path.bootstrap(away), tmp_path) as envoy:
        started = time.monotonic()
        status, body, _ = edge.call(envoy.port, "POST", "/v1/chat/completions", {"model": MODEL, "messages": []})
        assert status in epp_path.PICKER_AWAY and time.monotonic() - started < 2, (status, body)
        failed_open, answer = epp_path.PICKER_AWAY[status]
        assert body == answer, body
        assert envoy.stats(r"ext_proc\.(streams_failed|failure_mode_allowed)$") == {
            "http.edge.ext_proc.streams_failed": 1, "http.edge.ext_proc.failure_mode_allowed": failed_open}
        assert envoy.stats(r"cluster\.inference-pool\.upstream_rq_total$") == {"cluster.inference-pool.upstream_rq_total": 0}
