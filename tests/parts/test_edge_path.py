"""The ingress's data path on loopback, for real, configured from the program's own objects (its
EnvoyFilter and HTTPRoute, as istiod builds them for the gateway: tests/edge_istio.py): Envoy
checks the client's key itself (salted SHA-256 digests in its configuration, never the keys), asks
the body-based router which model the body names, routes on the header the router sets straight to
the model's server, answers the model list itself, and streams the tokens back; what it cannot
settle goes on to the front door.

Two llama-servers stand for two models, each with its own alias (its model id: it answers every
request with it, whatever the request names, so a response's `model` says which server answered)
and the key file the program's Secret gives it. The front door and the UI are stand-ins that say who
was asked, with which headers: LiteLLM itself is tested in test_front_door.py.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from components.edge import model_routing as routing
from tests import edge_istio as istio
from tests import edge_path as edge
from tools import edge_tools, mock_engine

CLIENT_KEY = "sk-edge-client-0123456789abcdef"
MODELS = ("alpha", "beta")
# A team's model, from its file: its server takes the team's key alone.
TEAM, TEAM_MODEL = "research", "gamma"

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
    probe = routing.key_check_source(salt="", digests={}, open_api=False, front_door=False) + """
function envoy_on_request(handle)
  local body = handle:body()
  local text = body and body:getBytes(0, body:length()) or ""
  handle:respond({[":status"] = "200"}, sha256_hex(text))
end
"""
    config = edge.bootstrap([routing.lua_filter(probe)], [{"match": {"prefix": "/"}, "direct_response": {"status": 500}}],
                            [])
    with edge.Envoy(config, tmp_path_factory.mktemp("digest-probe")) as envoy:
        yield envoy


@pytest.mark.parametrize("size", [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, 4099])
def test_key_checks_digest_is_sha256(digest_probe, size):
    """Every padding case (a block boundary at 55/56 and 64 bytes) and bytes above 0x7f."""
    data = bytes((i * 151 + size) % 256 for i in range(size))
    status, body, _ = edge.call(digest_probe.port, "POST", "/", data)
    assert status == 200 and body.decode() == hashlib.sha256(data).hexdigest()


# --- the whole path, as the program configures it ----------------------------------------------


PODS = {"llm-platform:llamaRouter": {"enabled": False}}
PROVIDER = {"name": "gpt-mini", "model": "openai/gpt-4o-mini", "apiBase": "https://api.openai.com/v1"}
OVERRIDES = {
    **PODS,
    "llm-platform:models": [{"name": alias, "file": f"{alias}.gguf"} for alias in MODELS],
    "llm-platform:frontDoor": {"providers": [PROVIDER]},
    "llm-platform:apiKey": CLIENT_KEY,
    "llm-platform:providerKeys": {PROVIDER["name"]: "sk-provider-not-used-0123456789"},
}
ENVOY_FILTER = "kubernetes:networking.istio.io/v1alpha3:EnvoyFilter"
HTTP_ROUTE = "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute"
SECRET = "kubernetes:core/v1:Secret"


class StandIn:
    """An HTTP server on loopback that answers every request with who it is and what it got."""

    def __init__(self, name: str):
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                seen.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                             "body": body})
                out = json.dumps({"via": name}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_OPTIONS = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def _existing_amd64(tmp_path_factory) -> dict:
    """The local stack's models on a cluster with amd64 nodes (where the body-based router runs)."""
    kubeconfig = tmp_path_factory.mktemp("kubeconfig") / "config"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    return {"llm-platform:cluster": {"kind": "existing", "kubeconfig": str(kubeconfig), "networkPolicy": "enforced"}}


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    """The program's objects for a stack of two llama.cpp servers, a hosted provider and the UI."""
    teams = tmp_path_factory.mktemp("teams")
    (teams / TEAM).mkdir()
    (teams / TEAM / f"{TEAM_MODEL}.yaml").write_text(f"file: {TEAM_MODEL}.gguf\n")
    rec = mock_engine.run("local", {**OVERRIDES, **_existing_amd64(tmp_path_factory),
                                    "llm-platform:teams": {TEAM: {"accelerators": 1, "memory": "8Gi"}},
                                    "llm-platform:teamModelsDir": str(teams)},
                          secrets=("llm-platform:apiKey", "llm-platform:providerKeys"))
    return SimpleNamespace(
        envoy_filter=rec.one(ENVOY_FILTER).inputs["spec"],
        routes=rec.one(HTTP_ROUTE, "gateway-routes").inputs["spec"],
        key_files={alias: rec.one(SECRET, f"model-{alias}-api-keys").inputs["stringData"]["value"]["keys"]
                   for alias in (*MODELS, TEAM_MODEL)},
        team_key=mock_engine.reveal(rec.outputs["teamApiKeys"])[TEAM])


def _stand_in_ports(program, servers, bbr, front_door, ui) -> dict[str, int]:
    """Each cluster the program's objects name, mapped to what stands for it on loopback."""
    ports = istio.stand_in_ports(program.routes, {a: s.port for a, s in servers.items()}, front_door.port, ui.port)
    if bbr is not None:
        ports[routing.bbr_cluster(FRONT_DOOR_NAMESPACE)] = bbr.port
    return ports


FRONT_DOOR_NAMESPACE = "front-door"


@pytest.fixture(scope="module")
def path(tmp_path_factory, program):
    _need(edge_tools.missing(edge_tools.BBR) or edge.missing_llama_server())
    tmp = tmp_path_factory.mktemp("edge-path")
    started, stand_ins = [], []
    try:
        servers = {}
        for alias in (*MODELS, TEAM_MODEL):
            keys = tmp / f"{alias}.keys"
            keys.write_text(program.key_files[alias])
            servers[alias] = edge.LlamaServer(alias, tmp / "models", extra=["--api-key-file", str(keys)])
            started.append(servers[alias])
        bbr = edge.Bbr(tmp / "bbr")
        started.append(bbr)
        front_door, ui = StandIn("front-door"), StandIn("ui")
        stand_ins += [front_door, ui]
        config = istio.ingress_bootstrap(
            program.envoy_filter, program.routes, _stand_in_ports(program, servers, bbr, front_door, ui),
            http2=[routing.bbr_cluster(FRONT_DOOR_NAMESPACE)])
        envoy = edge.Envoy(config, tmp / "envoy")
        started.append(envoy)
        yield SimpleNamespace(envoy=envoy, servers=servers, bbr=bbr, front_door=front_door, ui=ui,
                              team_key=program.team_key)
    finally:
        for p in reversed(started):
            p.stop()
        for s in stand_ins:
            s.stop()


def _post(path, body, key=CLIENT_KEY, headers=None, at="/v1/chat/completions"):
    status, raw, hdrs = edge.call(path.envoy.port, "POST", at, body, key, headers)
    return status, (json.loads(raw) if raw else None), hdrs


def _router_calls(path) -> int:
    stats = path.envoy.stats(r"ext_proc\.streams_started$")
    return sum(stats.values())


def test_a_teams_model_is_served_straight_for_its_teams_key_alone(path):
    """The team's server takes the team's key alone: the ingress routes the team's key to it
    straight, and any other key (the stack's, which the front door holds the team's backend key
    for) to the front door; a client's own key-holder header counts for nothing."""
    before = len(path.front_door.seen)
    status, body, _ = _post(path, _chat(TEAM_MODEL), key=path.team_key)
    assert status == 200 and body["model"] == TEAM_MODEL, body
    assert len(path.front_door.seen) == before
    for headers in ({}, {routing.KEY_HOLDER_HEADER: f"team-{TEAM}"}):
        status, body, _ = _post(path, _chat(TEAM_MODEL), headers=headers)
        assert status == 200 and body == {"via": "front-door"}, body
        asked = path.front_door.seen[-1]["headers"]
        assert asked[routing.KEY_HOLDER_HEADER] == routing.STACK_KEY_HOLDER
    # The team's key opens no other server.
    status, body, _ = _post(path, _chat(MODELS[0]), key=path.team_key)
    assert status == 401, body


def test_each_model_is_served_straight_by_its_server(path):
    for alias in MODELS:
        before, front_door_before = _router_calls(path), len(path.front_door.seen)
        status, body, _ = _post(path, _chat(alias))
        assert status == 200, body
        assert body["model"] == alias and body["choices"][0]["message"]["role"] == "assistant"
        # The router was asked once; the front door not at all.
        assert _router_calls(path) == before + 1
        assert len(path.front_door.seen) == front_door_before


def test_a_streamed_completion_arrives_to_done(path):
    chunks = edge.streamed_chunks(path.envoy.port, "/v1/chat/completions", _chat("beta", stream=True, max_tokens=32),
                                  CLIENT_KEY)
    assert len(chunks) > 1 and {c["model"] for c in chunks} == {"beta"}


def test_the_servers_check_the_key_again(path):
    """The key files the program gives the servers hold the client key (the ingress passes it on)
    and refuse a request without one: reaching a server past the ingress needs the key too. A
    team's server holds its team's key instead, never the stack's."""
    for alias, server in path.servers.items():
        own, other = (path.team_key, CLIENT_KEY) if alias == TEAM_MODEL else (CLIENT_KEY, path.team_key)
        assert edge.call(server.port, "POST", "/v1/chat/completions", _chat(alias))[0] == 401
        assert edge.call(server.port, "POST", "/v1/chat/completions", _chat(alias), other)[0] == 401
        assert edge.call(server.port, "POST", "/v1/chat/completions", _chat(alias), own)[0] == 200


@pytest.mark.parametrize("auth", [None, f"Basic {CLIENT_KEY}", "Bearer "])
def test_a_request_without_a_key_is_refused_at_the_ingress(path, auth):
    before, front_door_before = _router_calls(path), len(path.front_door.seen)
    headers = {"Authorization": auth} if auth is not None else {}
    status, body, hdrs = _post(path, _chat("alpha"), key=None, headers=headers)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert hdrs["www-authenticate"] == "Bearer"
    # Refused before the body went anywhere.
    assert _router_calls(path) == before and len(path.front_door.seen) == front_door_before


@pytest.mark.parametrize("key", ["sk-virtual-key-0123456789abcdef", f"{CLIENT_KEY}x"])
def test_a_key_the_ingress_does_not_know_goes_to_the_front_door(path, key):
    """Virtual keys and the UI's key are the front door's to check: such a request goes there, key
    and all, whatever model it names, and never straight to a server."""
    status, body, _ = _post(path, _chat("alpha"), key=key)
    assert status == 200 and body == {"via": "front-door"}
    seen = path.front_door.seen[-1]
    assert seen["headers"]["authorization"] == f"Bearer {key}"
    assert json.loads(seen["body"])["model"] == "alpha"


def test_a_model_the_platform_does_not_serve_goes_to_the_front_door(path):
    """A hosted provider's model and an unknown one: the front door answers (LiteLLM's 404 for an
    unknown model is tested with LiteLLM itself)."""
    for model in (PROVIDER["name"], "gamma"):
        status, body, _ = _post(path, _chat(model))
        assert status == 200 and body == {"via": "front-door"}
        assert path.front_door.seen[-1]["headers"]["authorization"] == f"Bearer {CLIENT_KEY}"


def test_the_client_cannot_pick_the_route_by_header(path):
    """Only the router sets the model header and only the key check the front-door mark: a client's
    own are dropped."""
    status, body, _ = _post(path, _chat("beta"), headers={edge.MODEL_HEADER: "alpha"})
    assert status == 200 and body["model"] == "beta"
    status, body, _ = _post(path, _chat("beta"), headers={routing.ROUTE_HEADER: routing.FRONT_DOOR_MARK})
    assert status == 200 and body["model"] == "beta"
    status, body, _ = _post(path, _chat(), headers={edge.MODEL_HEADER: "alpha"})
    assert body == {"via": "front-door"}


def test_the_model_list_is_the_front_doors(path):
    """`GET /v1/models` (every name, providers too) is answered by the front door, which checks the
    key itself; the router is not asked."""
    before = _router_calls(path)
    status, raw, _ = edge.call(path.envoy.port, "GET", "/v1/models", key=CLIENT_KEY)
    assert status == 200 and json.loads(raw) == {"via": "front-door"}
    assert path.front_door.seen[-1]["path"] == "/v1/models"
    assert _router_calls(path) == before
    assert edge.call(path.envoy.port, "GET", "/v1/models")[0] == 401


def test_pages_are_not_sent_to_the_router(path):
    """The UI's routes never wait for the router, even for a body that names a model."""
    before = _router_calls(path)
    assert edge.call(path.envoy.port, "GET", "/")[0] == 200
    status, body, _ = _post(path, _chat("alpha"), key=None, at="/api/chat")
    assert status == 200 and body == {"via": "ui"}
    assert _router_calls(path) == before


def test_the_configuration_holds_digests_not_keys(path, program):
    for text in (path.envoy.config_file.read_text(), json.dumps(program.envoy_filter)):
        assert CLIENT_KEY not in text


def test_a_router_that_does_not_answer_leaves_the_request_to_the_front_door(tmp_path, program):
    """Without the router no model header is set, so nothing goes straight: the front door takes
    the request (slower, never refused), and the key is still checked first."""
    free = SimpleNamespace(port=edge.free_port())
    front_door = StandIn("front-door")
    try:
        config = istio.ingress_bootstrap(program.envoy_filter, program.routes,
                                         _stand_in_ports(program, {a: free for a in (*MODELS, TEAM_MODEL)}, free, front_door, free),
                                         http2=[routing.bbr_cluster(FRONT_DOOR_NAMESPACE)])
        with edge.Envoy(config, tmp_path) as envoy:
            assert edge.call(envoy.port, "POST", "/v1/chat/completions", _chat("alpha"))[0] == 401
            status, raw, _ = edge.call(envoy.port, "POST", "/v1/chat/completions", _chat("alpha"), CLIENT_KEY)
            assert status == 200 and json.loads(raw) == {"via": "front-door"}
            assert front_door.seen[-1]["headers"]["authorization"] == f"Bearer {CLIENT_KEY}"
            # The model list needs no router.
            assert edge.call(envoy.port, "GET", "/v1/models", key=CLIENT_KEY)[0] == 200
    finally:
        front_door.stop()


def _long_chat(size: int) -> dict:
    return _chat("alpha", messages=[{"role": "user", "content": "x " * (size // 2)}])


def test_a_long_prompt_still_reaches_its_model(path):
    """Over Envoy's default buffer (1 MiB) and under the router's message limit (4 MiB): straight
    to the server, which answers (here, that it exceeds the tiny model's context)."""
    status, raw, _ = edge.call(path.envoy.port, "POST", "/v1/chat/completions", _long_chat(2 << 20), CLIENT_KEY)
    assert status == 400 and b"context" in raw, raw[:300]


def test_a_body_the_router_cannot_take_goes_to_the_front_door(path):
    """Over the router's message limit (4 MiB): on to the front door, whatever its size, never 413."""
    before = _router_calls(path)
    for size in (6 << 20, routing.BODY_LIMIT_BYTES + (1 << 20)):
        status, body, _ = _post(path, _long_chat(size))
        assert status == 200 and body == {"via": "front-door"}
    assert _router_calls(path) == before


@pytest.mark.parametrize("headers", [{"Content-Type": "text/plain"}, {"Content-Encoding": "gzip"}],
                         ids=["not-json", "compressed"])
def test_what_the_router_cannot_read_goes_to_the_front_door(path, headers):
    """With the client key too: the router reads plain JSON bodies alone."""
    before = _router_calls(path)
    status, raw, _ = edge.call(path.envoy.port, "POST", "/v1/chat/completions", json.dumps(_chat("alpha")).encode(),
                               CLIENT_KEY, headers)
    assert status == 200 and json.loads(raw) == {"via": "front-door"}
    assert _router_calls(path) == before


def test_a_websocket_goes_to_the_front_door(path):
    """A WebSocket's body never ends: held for the router, it would hang."""
    seen, before = len(path.front_door.seen), _router_calls(path)
    with socket.create_connection(("127.0.0.1", path.envoy.port), timeout=5) as sock:
        sock.sendall(b"GET /v1/realtime?model=alpha HTTP/1.1\r\nHost: edge\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     + f"Authorization: Bearer {CLIENT_KEY}\r\n\r\n".encode())
        deadline = time.monotonic() + 5
        while len(path.front_door.seen) == seen and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(path.front_door.seen) == seen + 1 and path.front_door.seen[-1]["path"].startswith("/v1/realtime")
    assert _router_calls(path) == before


def test_the_ingress_answers_100_continue_itself(path):
    """curl asks `Expect: 100-continue` for bodies over 1 MiB; held for the router, no upstream
    could answer it, and the client would wait a second before sending the body."""
    body = json.dumps(_chat("alpha")).encode()
    with socket.create_connection(("127.0.0.1", path.envoy.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {CLIENT_KEY}\r\nContent-Length: {len(body)}\r\n".encode()
                     + b"Expect: 100-continue\r\n\r\n")
        sock.settimeout(0.5)
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue")
        sock.settimeout(30)
        sock.sendall(body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200")


def test_the_router_never_sees_the_key_and_uploads_skip_it(path):
    """Uploads (multipart bodies, not JSON) go to the front door without the router; so do keys
    only the front door can check."""
    before = _router_calls(path)
    status, body, _ = _post(path, b"--x\r\ncontent\r\n--x--\r\n", headers={
        "Content-Type": "multipart/form-data; boundary=x"}, at="/v1/audio/transcriptions")
    assert status == 200 and body == {"via": "front-door"}
    assert _post(path, _chat("alpha"), key="sk-virtual-key-0123456789abcdef")[1] == {"via": "front-door"}
    assert _router_calls(path) == before


@pytest.mark.parametrize("headers", [{"x-api-key": "sk-virtual-key-0123456789abcdef"},
                                     {"api-key": "sk-virtual-key-0123456789abcdef"},
                                     {"Authorization": "Bearer " + "k" * 1000}])
def test_keys_the_ingress_cannot_read_go_to_the_front_door(path, headers):
    status, body, _ = _post(path, _chat("alpha"), key=None, headers=headers)
    assert status == 200 and body == {"via": "front-door"}


def test_a_cors_preflight_goes_to_the_front_door(path):
    status, raw, _ = edge.call(path.envoy.port, "OPTIONS", "/v1/chat/completions",
                               headers={"Origin": "https://example.org", "Access-Control-Request-Method": "POST"})
    assert status == 200 and json.loads(raw) == {"via": "front-door"}


# --- without the body-based router: one Service for every model ----------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The local stack as shipped (llama.cpp's router, minikube's arm64 node: no body-based router),
    one llama-server standing for the router."""
    _need(edge.missing_llama_server())
    rec = mock_engine.run("local", {"llm-platform:apiKey": CLIENT_KEY}, secrets=("llm-platform:apiKey",))
    program = SimpleNamespace(envoy_filter=rec.one(ENVOY_FILTER).inputs["spec"],
                              routes=rec.one(HTTP_ROUTE, "gateway-routes").inputs["spec"])
    tmp = tmp_path_factory.mktemp("served")
    keys = tmp / "keys"
    keys.write_text(rec.one(SECRET, "llama-router-api-keys").inputs["stringData"]["value"]["keys"])
    front_door, ui = StandIn("front-door"), StandIn("ui")
    try:
        with edge.LlamaServer("tinyllama", tmp / "model", extra=["--api-key-file", str(keys)]) as server:
            config = istio.ingress_bootstrap(program.envoy_filter, program.routes,
                                             _stand_in_ports(program, {"tinyllama": server}, None, front_door, ui))
            with edge.Envoy(config, tmp / "envoy") as envoy:
                yield SimpleNamespace(envoy=envoy, front_door=front_door)
    finally:
        front_door.stop()
        ui.stop()


def test_without_the_router_a_known_key_goes_straight_to_the_one_service(served):
    status, raw, _ = edge.call(served.envoy.port, "POST", "/v1/chat/completions", _chat("tinyllama"), CLIENT_KEY)
    assert status == 200 and json.loads(raw)["model"] == "tinyllama"
    status, raw, _ = edge.call(served.envoy.port, "POST", "/v1/chat/completions", _chat("tinyllama"),
                               "sk-virtual-key-0123456789abcdef")
    assert status == 200 and json.loads(raw) == {"via": "front-door"}
    assert edge.call(served.envoy.port, "POST", "/v1/chat/completions", _chat("tinyllama"))[0] == 401
    # The model list is the front door's here too (it lists providers' names beside the router's).
    status, raw, _ = edge.call(served.envoy.port, "GET", "/v1/models", key=CLIENT_KEY)
    assert status == 200 and json.loads(raw) == {"via": "front-door"}


@pytest.mark.parametrize("at", ["/v1beta/models", "/v1x"])
def test_only_whole_v1_segments_are_the_api(path, at):
    """A path that merely starts with the letters goes where the gateway's rules send it (the UI),
    unasked for a key: the key check reads `/v1` as the rules do, by whole segments."""
    status, raw, _ = edge.call(path.envoy.port, "GET", at)
    assert status == 200 and json.loads(raw) == {"via": "ui"}
    assert path.ui.seen[-1]["path"] == at
