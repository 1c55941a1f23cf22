"""The edge's data path on loopback, for real: Envoy checks the client's key itself (SHA-256 digests
in its configuration, never the keys), asks the body-based router which model the body names, routes
on the header the router sets, answers the model list itself, and streams the tokens back.

Two llama-servers stand for two models, each with its own alias (its model id: it answers every
request with it, whatever the request names, so a response's `model` says which server answered)
and its own backend key, which only Envoy holds.
"""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pytest

from tests import edge_fragments as frag
from tests import edge_path as edge
from tools import edge_tools

CLIENT_KEY = "sk-edge-client-0123456789abcdef"
OTHER_CLIENT_KEY = "sk-edge-other-fedcba9876543210"
MODELS = {"alpha": "backend-key-alpha", "beta": "backend-key-beta"}

pytestmark = pytest.mark.skipif(bool(edge_tools.missing()), reason=edge_tools.missing() or "")


def _chat(model=None, **extra) -> dict:
    body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, **extra}
    return {"model": model, **body} if model is not None else body


def _need(why):
    if why:
        pytest.skip(why)


# --- the key check's digest ------------------------------------------------------------------


@pytest.fixture(scope="module")
def digest_probe(tmp_path_factory):
    """Envoy answering every request with the key check's SHA-256 of the request's body."""
    probe = frag.api_key_lua([]) + """
function envoy_on_request(handle)
  local body = handle:body()
  local text = body and body:getBytes(0, body:length()) or ""
  handle:respond({[":status"] = "200"}, sha256_hex(text))
end
"""
    config = edge.bootstrap([frag.lua_filter(probe)], [{"match": {"prefix": "/"}, "direct_response": {"status": 500}}],
                            [])
    with edge.Envoy(config, tmp_path_factory.mktemp("digest-probe")) as envoy:
        yield envoy


@pytest.mark.parametrize("size", [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, 4099])
def test_key_checks_digest_is_sha256(digest_probe, size):
    """Every padding case (a block boundary at 55/56 and 64 bytes) and bytes above 0x7f."""
    data = bytes((i * 151 + size) % 256 for i in range(size))
    status, body, _ = edge.call(digest_probe.port, "POST", "/", data)
    assert status == 200 and body.decode() == hashlib.sha256(data).hexdigest()


# --- the whole path --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    _need(edge_tools.missing(edge_tools.BBR) or edge.missing_llama_server())
    tmp = tmp_path_factory.mktemp("edge-path")
    started = []
    try:
        servers = {alias: edge.LlamaServer(alias, tmp / "models", key=key) for alias, key in MODELS.items()}
        started += servers.values()
        bbr = edge.Bbr(tmp / "bbr")
        started.append(bbr)
        config = edge.bootstrap(
            http_filters=[frag.api_key_filter([frag.key_digest(CLIENT_KEY), frag.key_digest(OTHER_CLIENT_KEY)]),
                          frag.ext_proc_filter("bbr")],
            routes=frag.routes({alias: (f"model-{alias}", key) for alias, key in MODELS.items()}),
            clusters=[edge.static_cluster("bbr", bbr.port, http2=True),
                      *(edge.static_cluster(f"model-{a}", s.port) for a, s in servers.items())])
        envoy = edge.Envoy(config, tmp / "envoy")
        started.append(envoy)
        yield SimpleNamespace(envoy=envoy, servers=servers, bbr=bbr)
    finally:
        for p in reversed(started):
            p.stop()


def _post(path, body, key=CLIENT_KEY, headers=None):
    status, raw, hdrs = edge.call(path.envoy.port, "POST", "/v1/chat/completions", body, key, headers)
    return status, (json.loads(raw) if raw else None), hdrs


def _router_calls(path) -> int:
    return path.envoy.stats(r"ext_proc\.streams_started$").get("http.edge.ext_proc.streams_started", 0)


def test_the_body_picks_the_server(path):
    for alias in MODELS:
        before = _router_calls(path)
        status, body, _ = _post(path, _chat(alias))
        assert status == 200, body
        # The counter the refusal tests read moves for a request that is let in.
        assert _router_calls(path) == before + 1
        assert body["model"] == alias and body["choices"][0]["message"]["role"] == "assistant"


def test_each_server_gets_its_backend_key_not_the_clients(path):
    """A server refuses the client's key; through Envoy the same request passes, so the route
    replaced it with the server's own."""
    for alias, server in path.servers.items():
        assert edge.call(server.port, "POST", "/v1/chat/completions", _chat(alias), CLIENT_KEY)[0] == 401
        assert _post(path, _chat(alias))[0] == 200


def test_a_streamed_completion_arrives_to_done(path):
    conn, resp = edge.request(path.envoy.port, "POST", "/v1/chat/completions", _chat("beta", stream=True, max_tokens=32),
                              CLIENT_KEY)
    try:
        assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
        events = list(edge.sse_events(resp))
    finally:
        conn.close()
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) > 1 and {c["model"] for c in chunks} == {"beta"}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


@pytest.mark.parametrize("auth", [None, "Bearer sk-not-a-key", f"Basic {CLIENT_KEY}", f"Bearer {CLIENT_KEY}x",
                                  "Bearer ", f"Bearer {frag.key_digest(CLIENT_KEY)}",
                                  f"Bearer {CLIENT_KEY}{'x' * 300}"])
def test_a_request_without_a_valid_key_is_refused(path, auth):
    before = _router_calls(path)
    headers = {"Authorization": auth} if auth is not None else {}
    status, body, hdrs = _post(path, _chat("alpha"), key=None, headers=headers)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert hdrs["content-type"] == "application/json"
    # Refused before the body went anywhere: the router was not asked.
    assert _router_calls(path) == before


def test_every_configured_key_is_accepted(path):
    for key in (CLIENT_KEY, OTHER_CLIENT_KEY):
        assert _post(path, _chat("alpha"), key=key)[0] == 200
    assert _post(path, _chat("alpha"), key=None, headers={"Authorization": f"bearer {CLIENT_KEY}"})[0] == 200


def test_the_configuration_holds_digests_not_keys(path):
    text = path.envoy.config_file.read_text()
    assert CLIENT_KEY not in text and OTHER_CLIENT_KEY not in text
    assert frag.key_digest(CLIENT_KEY) in text


def test_an_unknown_model_is_404(path):
    status, body, _ = _post(path, _chat("gamma"))
    assert status == 404 and body["error"]["code"] == "model_not_found"


def test_a_body_without_a_model_is_400(path):
    status, body, _ = _post(path, _chat())
    assert status == 400 and body["error"]["code"] == "model_required"


def test_the_client_cannot_pick_the_route_by_header(path):
    """Only the router sets the routing header: one sent by the client is dropped with the key
    check, so a body without a model is still refused and one naming beta still goes to beta."""
    status, body, _ = _post(path, _chat(), headers={edge.MODEL_HEADER: "alpha"})
    assert status == 400 and body["error"]["code"] == "model_required"
    status, body, _ = _post(path, _chat("beta"), headers={edge.MODEL_HEADER: "alpha"})
    assert status == 200 and body["model"] == "beta"


def test_a_body_that_is_not_json_is_400_from_the_router(path):
    status, raw, _ = edge.call(path.envoy.port, "POST", "/v1/chat/completions", b"{not json", CLIENT_KEY)
    assert status == 400 and b"failed to parse request body" in raw


def test_envoy_answers_the_model_list_itself(path):
    before = _router_calls(path)
    status, raw, hdrs = edge.call(path.envoy.port, "GET", "/v1/models", key=CLIENT_KEY)
    assert status == 200 and hdrs["content-type"] == "application/json"
    assert [m["id"] for m in json.loads(raw)["data"]] == list(MODELS)
    assert _router_calls(path) == before
    assert edge.call(path.envoy.port, "GET", "/v1/models")[0] == 401


def test_a_router_that_does_not_answer_fails_the_request(tmp_path):
    """Without the router no request is routed: Envoy answers 500 rather than guess (the filter
    does not fail open), and the key is still checked first."""
    config = edge.bootstrap([frag.api_key_filter([frag.key_digest(CLIENT_KEY)]), frag.ext_proc_filter("bbr")],
                            frag.routes({"alpha": ("model-alpha", None)}),
                            [edge.static_cluster("bbr", edge.free_port(), http2=True),
                             edge.static_cluster("model-alpha", edge.free_port())])
    with edge.Envoy(config, tmp_path) as envoy:
        assert edge.call(envoy.port, "POST", "/v1/chat/completions", _chat("alpha"))[0] == 401
        assert edge.call(envoy.port, "POST", "/v1/chat/completions", _chat("alpha"), CLIENT_KEY)[0] == 500
        # The model list needs no router.
        assert edge.call(envoy.port, "GET", "/v1/models", key=CLIENT_KEY)[0] == 200


def test_a_body_over_envoys_buffer_is_413(path):
    """The router needs the whole body, so Envoy buffers it, up to the listener's buffer limit
    (1 MiB unless the configuration raises it): a larger request is refused before routing."""
    body = _chat("alpha", messages=[{"role": "user", "content": "x" * (1 << 20)}])
    assert edge.call(path.envoy.port, "POST", "/v1/chat/completions", body, CLIENT_KEY)[0] == 413
