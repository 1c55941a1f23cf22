"""What wakes, and keeps awake, a model server scaled to zero, from what the real parts report:
the LiteLLM release of the image (started with the rendered config, one model's server running
and the other's at zero) and the real llama-server, their /metrics read as Prometheus stores
them, and the query KEDA is given evaluated by Prometheus's own engine (tests/promql.py)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
from urllib.parse import urlparse

import pytest

from components.edge import front_door
from components.serving.autoscaling import FRONT_DOOR_REQUESTS, RUNNING_METRIC, ScaledServer, demand_query
from tests import promql
from tests.shared import LLAMA_SERVER, TINY_MODEL
from tools import mock_engine as harness
from tests.program.test_front_door import (  # noqa: F401 (recorded: the module's fixture)
    CLIENT_KEY, SECRET, proxy_container, recorded, rendered_config, write_config_dir,
)
from tests.parts.test_front_door import LITELLM, _chat, _free_port, _request, _wait_ready, stop, xfcc

FRONT_DOOR_NS = "front-door"
# The labels Prometheus adds to every series it scrapes from the front door's pod.
FRONT_DOOR_TARGET = {"namespace": FRONT_DOOR_NS, "job": front_door.NAME, "pod": "litellm-0"}
UP = 'up{namespace="front-door",job="litellm",pod="litellm-0"}'
SERVING, AT_ZERO = "tinyllama", "qwen"


def server(name: str) -> ScaledServer:
    """A llama.cpp server as the local stack's pods run it (the query reads no setting)."""
    return ScaledServer(name=name, kind="Deployment", runtime="llama-cpp", autoscaling=None)


class FrontDoor:
    def __init__(self, proxy_port: int, server_port: int, backend_key: str, ui_key: str, ui_peer: str):
        self.proxy_port, self.server_port, self.backend_key = proxy_port, server_port, backend_key
        self.ui_key, self.ui_peer = ui_key, ui_peer

    def counters(self) -> dict[str, float]:
        status, body = _request(self.proxy_port, "GET", front_door.METRICS_PATH)
        assert status == 200
        return promql.exposition(body.decode(), [FRONT_DOOR_REQUESTS], FRONT_DOOR_TARGET)

    def settled(self) -> dict[str, float]:
        """The counters once LiteLLM has logged what it answered (it counts a success in a task
        of its own, after the response has gone)."""
        last, deadline = self.counters(), time.monotonic() + 15
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self.counters()
            if now == last:
                return now
            last = now
        raise AssertionError("the front door's counters never settled")

    def after(self, before: dict[str, float], model: str) -> dict[str, float]:
        """The counters once one of `model`'s series is new or has grown since `before`, waiting
        for LiteLLM to count the request."""
        deadline = time.monotonic() + 15
        while True:
            now = self.counters()
            if changed(before, now, model) or time.monotonic() > deadline:
                return now
            time.sleep(0.2)


def changed(before: dict[str, float], after: dict[str, float], model: str) -> dict[str, float]:
    return {s: v for s, v in after.items() if f'requested_model="{model}"' in s and before.get(s) != v}


@pytest.fixture(scope="module")
def at_zero(recorded, tmp_path_factory):
    """The rendered front door with tinyllama's server running and qwen's at zero (its Service
    has no endpoint: nothing listens where the config points)."""
    missing = [str(p) for p in (LITELLM, LLAMA_SERVER, TINY_MODEL) if not p.exists()]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (`make setup` builds .venv-litellm)")
    tmp = tmp_path_factory.mktemp("wake")
    keys = harness.reveal(recorded.one(SECRET, "front-door-keys").inputs["stringData"])
    backend_key = keys[front_door.BACKEND_KEY_ENV]
    (tmp / "api-keys").write_text(backend_key + "\n")
    procs: list[subprocess.Popen] = []
    try:
        port = _free_port()
        log = tmp / "llama.log"
        procs.append(subprocess.Popen(
            [str(LLAMA_SERVER), "-m", str(TINY_MODEL), "--alias", SERVING, "--host", "127.0.0.1",
             "--port", str(port), "--ctx-size", "2048", "--threads", "1", "--parallel", "2", "--metrics",
             "--api-key-file", str(tmp / "api-keys")], stdout=log.open("w"), stderr=subprocess.STDOUT))
        ports = {SERVING: port, AT_ZERO: _free_port()}
        cfg = rendered_config(recorded)
        for entry in cfg["model_list"]:
            base = urlparse(entry["litellm_params"]["api_base"])
            alias = base.hostname.split(".")[0] if base.hostname.endswith(".svc.cluster.local") else None
            if alias in ports:
                entry["litellm_params"]["api_base"] = f"http://127.0.0.1:{ports[alias]}{base.path}"
        config = write_config_dir(recorded, tmp, cfg)
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp)}
        for e in proxy_container(recorded)["env"]:
            env[e["name"]] = e["value"] if "value" in e else keys[e["valueFrom"]["secretKeyRef"]["key"]]
        proxy_port = _free_port()
        proxy_log = tmp / "litellm.log"
        procs.append(subprocess.Popen(
            [str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(proxy_port)],
            stdout=proxy_log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=tmp))
        _wait_ready(port, "/health", procs[0], log, 30)
        _wait_ready(proxy_port, front_door.READINESS_PATH, procs[1], proxy_log, 180)
        yield FrontDoor(proxy_port, port, backend_key, keys[front_door.UI_KEY_ENV], env[front_door.UI_PEER_ENV])
    finally:
        stop(procs, 10)


def wakes(before: dict[str, float], after: dict[str, float], model: str) -> float:
    """The wake-up query for `model` a minute after the counters went from `before` to `after`,
    on a Prometheus that has scraped the front door for ten minutes."""
    history = {UP: "1x60"}
    for name, count in after.items():
        history[name] = (f"{before[name]:g}x40 " if name in before else "_x40 ") + f"{count:g}x20"
    return promql.value(history, demand_query(server(model), "models", FRONT_DOOR_NS), 600 + 60)


def test_requests_refused_at_the_door_wake_nothing(at_zero):
    """Anyone who reaches the gateway can send these: no key (401), a made-up key (400, no
    database), the UI's key from outside the UI (403). LiteLLM counts each for the model asked."""
    before = at_zero.settled()
    refused = [
        _request(at_zero.proxy_port, "POST", "/v1/chat/completions", None, _chat(AT_ZERO)),
        _request(at_zero.proxy_port, "POST", "/v1/chat/completions", "sk-made-up-0123456789abcdef", _chat(AT_ZERO)),
        _request(at_zero.proxy_port, "POST", "/v1/chat/completions", at_zero.ui_key, _chat(AT_ZERO)),
    ]
    assert sorted(status for status, _ in refused) == [400, 401, 403], refused
    after = at_zero.settled()
    assert changed(before, after, AT_ZERO)  # what the query must see past
    assert wakes(before, after, AT_ZERO) == 0


def test_an_admitted_request_wakes_the_server_at_zero(at_zero):
    """The client's key (5xx: nothing behind the front door yet) and the UI's key from the UI."""
    for key, peer in ((CLIENT_KEY, ()), (at_zero.ui_key, [xfcc(at_zero.ui_peer)])):
        before = at_zero.settled()
        status, body = _request(at_zero.proxy_port, "POST", "/v1/chat/completions", key, _chat(AT_ZERO), xfcc=peer)
        assert 500 <= status < 600, body
        after = at_zero.after(before, AT_ZERO)
        assert changed(before, after, AT_ZERO) and wakes(before, after, AT_ZERO) == 1


def test_answered_requests_keep_the_serving_model_awake(at_zero):
    before = at_zero.settled()
    assert _request(at_zero.proxy_port, "POST", "/v1/chat/completions", CLIENT_KEY, _chat(SERVING))[0] == 200
    after = at_zero.after(before, SERVING)
    assert changed(before, after, SERVING) and wakes(before, after, SERVING) == 1


def test_a_long_generation_keeps_its_server_awake(at_zero):
    """A stream still generating has not been counted by the front door (LiteLLM counts a request
    once it ended) and waits for nothing: only the server's own gauge of requests in progress
    says it is busy. Long after any counted request, the query still holds the server."""
    before = at_zero.settled()
    conn = http.client.HTTPConnection("127.0.0.1", at_zero.proxy_port, timeout=60)
    body = json.dumps({**_chat(SERVING, stream=True, max_tokens=1000), "ignore_eos": True})
    conn.request("POST", "/v1/chat/completions", body,
                 {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline().startswith(b"data: ")  # generating
    status, text = _request(at_zero.server_port, "GET", "/metrics", at_zero.backend_key)
    counted = at_zero.counters()
    resp.read()  # until it ends
    conn.close()
    assert status == 200
    gauge = promql.exposition(text.decode(), [RUNNING_METRIC["llama-cpp"]],
                              {"namespace": "models", "model": SERVING, "pod": f"{SERVING}-0"})
    assert list(gauge.values()) == [1], gauge
    assert counted == before  # the front door has not counted it yet
    # Ten minutes of the same: counters flat, the server busy.
    steady = {UP: "1x60", **{s: f"{v:g}x60" for s, v in counted.items()}, **{s: f"{v:g}x60" for s, v in gauge.items()}}
    assert promql.value(steady, demand_query(server(SERVING), "models", FRONT_DOOR_NS), 600) == 1
    idle = {s: (v if s not in gauge else "0x60") for s, v in steady.items()}
    assert promql.value(idle, demand_query(server(SERVING), "models", FRONT_DOOR_NS), 600) == 0
