"""The front door for real: LiteLLM's proxy, the release the image runs (installed from PyPI into
.venv-litellm), started with exactly the config the program renders, in front of two real
llama-servers. Only the model servers' addresses are mapped to loopback. What the program renders for
it: tests/program/test_front_door.py."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import urlparse

import pytest

from components.edge import front_door
from tests.shared import LLAMA_SERVER, TINY_MODEL
from tests.program.test_front_door import (  # noqa: F401 (recorded: the module's fixture)
    CLIENT_KEY, MODELS, PROVIDER, SECRET, TEAM, UI_ID, proxy_container, recorded, rendered_config, service_host,
    write_config_dir,
)
from tools import mock_engine as harness

ROOT = Path(__file__).resolve().parents[2]
LITELLM = ROOT / ".venv-litellm" / "bin" / "litellm"
GATEWAY_ID = "spiffe://cluster.local/ns/istio-ingress/sa/istio-ingress"
FRONT_DOOR_ID = "spiffe://cluster.local/ns/front-door/sa/litellm"


# --- LiteLLM's side of the custom auth the config ships -----------------------------------


LITELLM_PYTHON = ROOT / ".venv-litellm" / "bin" / "python"


def _import_auth(*before: str) -> subprocess.CompletedProcess:
    code = "\n".join([*before, "import front_door_auth"])
    return subprocess.run([str(LITELLM_PYTHON), "-c", code], cwd=ROOT / "components" / "edge" / "files", capture_output=True,
                          text=True, timeout=120)


def test_the_auth_module_needs_litellm_enterprise_inside_litellm_only():
    # The program imports its constants without LiteLLM installed.
    assert front_door.front_door_auth.UI_KEY_ENV == "LITELLM_UI_KEY"
    if not LITELLM_PYTHON.exists():
        pytest.skip("needs .venv-litellm (`make setup`)")
    # Where LiteLLM runs, as the proxy loads it (by file, from the config's folder).
    done = _import_auth()
    assert done.returncode == 0, done.stderr
    # Without litellm_enterprise, `custom_auth_settings.mode: auto` is not applied and the master key
    # would be refused: the proxy fails at start instead.
    done = _import_auth("import sys", "sys.modules['litellm_enterprise'] = None")
    assert done.returncode != 0 and "litellm_enterprise" in done.stderr, done.stderr


# --- the real proxy in front of real servers ---------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, method: str, path: str, key: str | None = None, body: dict | None = None,
             timeout: float = 60, xfcc: Sequence[str] = ()) -> tuple[int, bytes]:
    """`xfcc`: x-forwarded-client-cert header lines, as the front door's sidecar would pass them."""
    status, _, data = _exchange(port, method, path, key, body, timeout, xfcc)
    return status, data


def _exchange(port: int, method: str, path: str, key: str | None = None, body: dict | None = None,
              timeout: float = 60, xfcc: Sequence[str] = (), headers: Mapping[str, str] | None = None,
              ) -> tuple[int, http.client.HTTPMessage, bytes]:
    """As `_request`, with more request `headers`, and the response's headers too."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = json.dumps(body).encode() if body is not None else None
    conn.putrequest(method, path)
    conn.putheader("Content-Type", "application/json")
    if key:
        conn.putheader("Authorization", f"Bearer {key}")
    for line in xfcc:
        conn.putheader("x-forwarded-client-cert", line)
    for name, value in (headers or {}).items():
        conn.putheader(name, value)
    if data is not None:
        conn.putheader("Content-Length", str(len(data)))
    conn.endheaders(data)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, resp.headers, data


def _wait_ready(port: int, path: str, proc: subprocess.Popen, log: Path, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if _request(port, "GET", path, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"not ready after {limit_s}s:\n{log.read_text()[-3000:]}")


def xfcc(uri: str, *before: str) -> str:
    """An x-forwarded-client-cert value as Envoy writes it, `uri` the peer's certificate URI, after
    the elements `before` (what earlier hops, or a client, sent)."""
    own = f'By={FRONT_DOOR_ID};Hash=5f3c0e;Subject="";URI={uri};DNS=litellm'
    return ",".join([*before, own])


class Stack:
    def __init__(self, proxy_port: int, servers: dict[str, int], backend_key: str, ui_key: str, ui_peer: str,
                 team_key: str):
        self.proxy_port, self.servers, self.backend_key, self.ui_key = proxy_port, servers, backend_key, ui_key
        # The research team's key, which opens its model (qwen) alone.
        self.team_key = team_key
        # The key each server takes from the front door (the team's server its team's).
        self.server_keys: dict[str, str] = {}
        # What the front door's sidecar passes on for a request from the UI's pod.
        self.from_ui = [xfcc(ui_peer)]


@pytest.fixture(scope="module")
def stack(recorded, tmp_path_factory):
    missing = [str(p) for p in (LITELLM, LLAMA_SERVER, TINY_MODEL) if not p.exists()]
    if missing:
        pytest.skip(f"real front door test needs {', '.join(missing)} (`make setup` builds .venv-litellm)")
    tmp = tmp_path_factory.mktemp("front-door")
    keys = harness.reveal(recorded.one(SECRET, "front-door-keys").inputs["stringData"])
    backend_key = keys[front_door.BACKEND_KEY_ENV]
    (tmp / "api-keys").write_text(backend_key + "\n")
    # The team's server takes its team's backend key alone.
    team_backend_key = keys[front_door.team_backend_key_env(TEAM)]
    (tmp / "team-api-keys").write_text(team_backend_key + "\n")
    procs: list[subprocess.Popen] = []
    try:
        servers: dict[str, int] = {}
        for m in MODELS:
            port = _free_port()
            log = tmp / f"{m['name']}.log"
            procs.append(subprocess.Popen(
                [str(LLAMA_SERVER), "-m", str(TINY_MODEL), "--alias", m["name"], "--host", "127.0.0.1",
                 "--port", str(port), "--ctx-size", "2048", "--threads", "1", "--parallel", "4", "--metrics",
                 "--api-key-file", str(tmp / ("team-api-keys" if m["name"] == "qwen" else "api-keys"))],
                stdout=log.open("w"), stderr=subprocess.STDOUT))
            servers[m["name"]] = port
        # The rendered config, with each Service's address mapped to its local server.
        cfg = rendered_config(recorded)
        hosts = {service_host(recorded, m["name"]): servers[m["name"]] for m in MODELS}
        for entry in cfg["model_list"]:
            base = urlparse(entry["litellm_params"]["api_base"])
            if base.hostname in hosts:
                entry["litellm_params"]["api_base"] = f"http://127.0.0.1:{hosts[base.hostname]}{base.path}"
        assert all(urlparse(e["litellm_params"].get("api_base", "")).hostname in ("127.0.0.1", "api.openai.com")
                   for e in cfg["model_list"])
        # A second team whose key has a budget, as the program writes one (tests/program/test_teams.py):
        # the custom auth holds it to its models, then hands it to LiteLLM's own auth.
        teams = json.loads(keys[front_door.TEAM_KEYS_ENV])
        keys = {**keys, front_door.TEAM_KEYS_ENV: json.dumps(
            {**teams, BUDGETED_TEAM: {"key": BUDGETED_KEY, "models": ["qwen"], "budget": True}})}
        proxy, proxy_port, env = start_proxy(recorded, tmp, cfg, keys)
        procs.append(proxy)
        for m in MODELS:
            _wait_ready(servers[m["name"]], "/health", procs[MODELS.index(m)], tmp / f"{m['name']}.log", 30)
        _wait_ready(proxy_port, front_door.READINESS_PATH, proxy, tmp / PROXY_LOG, 180)
        team_key = json.loads(keys[front_door.TEAM_KEYS_ENV])[TEAM]["key"]
        stack = Stack(proxy_port, servers, backend_key, keys[front_door.UI_KEY_ENV], env[front_door.UI_PEER_ENV], team_key)
        stack.server_keys = {m["name"]: team_backend_key if m["name"] == "qwen" else backend_key for m in MODELS}
        yield stack
    finally:
        stop(procs, 10)


PROXY_LOG = "litellm.log"
BUDGETED_TEAM = "ledger"
BUDGETED_KEY = "sk-ledger-" + "b4dg3t" * 8


def start_proxy(recorded, tmp: Path, cfg: dict, keys: dict[str, str]) -> tuple[subprocess.Popen, int, dict]:
    """LiteLLM started as the pod starts it: `cfg` (the rendered config, its addresses mapped here)
    beside the ConfigMap's other files, and the container's env; (process, port, env)."""
    config = write_config_dir(recorded, tmp, cfg)
    # The env the pod gets: literal values as rendered, Secret references resolved.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp)}
    for e in proxy_container(recorded)["env"]:
        env[e["name"]] = e["value"] if "value" in e else keys[e["valueFrom"]["secretKeyRef"]["key"]]
    port = _free_port()
    proc = subprocess.Popen(
        [str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        stdout=(tmp / PROXY_LOG).open("w"), stderr=subprocess.STDOUT, env=env, cwd=tmp)
    return proc, port, env


def stop(procs: list, grace_s: float) -> None:
    """Terminate every process, then kill those still running after `grace_s`."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            p.kill()


def _chat(model: str, stream: bool = False, max_tokens: int = 8) -> dict:
    return {"model": model, "stream": stream, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "Say hello."}]}


def _predicted_tokens(port: int, key: str) -> float:
    status, body = _request(port, "GET", "/metrics", key)
    assert status == 200
    match = re.search(r"^llamacpp:tokens_predicted_total (\S+)$", body.decode(), re.M)
    return float(match.group(1))


def test_routes_each_model_to_its_own_server(stack):
    for m in MODELS:
        before = {a: _predicted_tokens(p, stack.server_keys[a]) for a, p in stack.servers.items()}
        status, body = _request(stack.proxy_port, "POST", "/v1/chat/completions", CLIENT_KEY, _chat(m["name"]))
        assert status == 200, body
        assert json.loads(body)["choices"][0]["message"]["content"] is not None
        after = {a: _predicted_tokens(p, stack.server_keys[a]) for a, p in stack.servers.items()}
        assert after[m["name"]] > before[m["name"]]
        assert all(after[a] == before[a] for a in stack.servers if a != m["name"])


def test_models_lists_every_alias(stack):
    status, body = _request(stack.proxy_port, "GET", "/v1/models", CLIENT_KEY)
    assert status == 200, body
    assert sorted(m["id"] for m in json.loads(body)["data"]) == sorted([m["name"] for m in MODELS] + [PROVIDER["name"]])


def test_refused_without_the_client_key(stack):
    for path, body in (("/v1/models", None), ("/v1/chat/completions", _chat("tinyllama"))):
        method = "POST" if body else "GET"
        status, answer = _request(stack.proxy_port, method, path, None, body)
        assert status == 401, answer
        for key in ("sk-wrong-0123456789abcdef", stack.backend_key):
            # Any key but the master key is taken for a virtual key, and without a database
            # LiteLLM refuses it with 400 "No connected db." rather than 401.
            status, answer = _request(stack.proxy_port, method, path, key, body)
            assert status in (400, 401), answer
    # ...and the client key does not open the servers.
    port = stack.servers["tinyllama"]
    assert _request(port, "POST", "/v1/chat/completions", CLIENT_KEY, _chat("tinyllama"))[0] == 401


def test_a_teams_key_opens_its_own_models_alone(stack):
    """The research team's key chats with its model, streamed to [DONE], and sees it alone in the
    model list; the platform's model and the providers stay closed to it."""
    status, body = _request(stack.proxy_port, "GET", "/v1/models", stack.team_key)
    assert status == 200, body
    assert [m["id"] for m in json.loads(body)["data"]] == ["qwen"]
    status, body = _request(stack.proxy_port, "POST", "/v1/chat/completions", stack.team_key, _chat("qwen"))
    assert status == 200, body
    _, chunks, done = _stream(stack.proxy_port, stack.team_key, "qwen", 8)
    assert done and chunks
    for model in ("tinyllama", PROVIDER["name"]):
        status, body = _request(stack.proxy_port, "POST", "/v1/chat/completions", stack.team_key, _chat(model))
        assert status in (401, 403), (model, status, body)
    # Nor by the query LiteLLM takes over the body, nor by a fallback the router would call instead.
    status, body = _request(stack.proxy_port, "POST", "/v1/chat/completions?model=tinyllama", stack.team_key,
                            _chat("qwen"))
    assert status == 403, body
    status, body = _request(stack.proxy_port, "POST", "/v1/chat/completions", stack.team_key,
                            {**_chat("qwen"), "fallbacks": ["tinyllama"], "mock_testing_fallbacks": True})
    assert status == 403, body
    # ...and it is no key to anything else: the admin routes refuse it.
    status, body = _request(stack.proxy_port, "POST", "/key/generate", stack.team_key, {})
    assert status in (401, 403), body


# What the UI calls (Open WebUI lists models and chats, streamed or not, at the OpenAI base URL).
def test_the_ui_key_lists_the_models_and_chats(stack):
    for path in ("/v1/models", "/models"):
        status, body = _request(stack.proxy_port, "GET", path, stack.ui_key, xfcc=stack.from_ui)
        assert status == 200, body
        assert sorted(m["id"] for m in json.loads(body)["data"]) == sorted(
            [m["name"] for m in MODELS] + [PROVIDER["name"]])
    for path in ("/v1/chat/completions", "/chat/completions"):
        status, body = _request(stack.proxy_port, "POST", path, stack.ui_key, _chat("tinyllama"), xfcc=stack.from_ui)
        assert status == 200, body
        assert json.loads(body)["choices"][0]["message"]["content"] is not None
    _, chunks, done = _stream(stack.proxy_port, stack.ui_key, "qwen", 16, xfcc=stack.from_ui)
    assert chunks >= 2 and done


# The UI's key leaked, sent through the public ingress (the gateway's identity is the last
# element the front door's sidecar appends), or with a header made up to look like the UI's.
def not_the_ui(stack) -> dict[str, list[str]]:
    ui = stack.from_ui[0]
    return {
        "no header (no mTLS: the sidecar drops a client's)": [],
        "the ingress gateway": [xfcc(GATEWAY_ID)],
        "forged: the UI's element, then the gateway's": [xfcc(GATEWAY_ID, ui)],
        "forged: the UI's element as a second header line": [xfcc(GATEWAY_ID), ui],
        "the UI's URI and another one": [xfcc(UI_ID + ";URI=" + GATEWAY_ID)],
        "a URI that merely starts like the UI's": [xfcc(UI_ID + "-x")],
        "forged: an open quote hiding the gateway's element": [xfcc(GATEWAY_ID, f'URI={UI_ID};a="')],
    }


def test_the_ui_key_is_refused_from_anyone_but_the_ui(stack):
    for case, lines in not_the_ui(stack).items():
        for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/chat/completions", _chat("tinyllama"))):
            status, answer = _request(stack.proxy_port, method, path, stack.ui_key, body, xfcc=lines)
            assert status == 403, (case, answer)
            assert json.loads(answer)["error"]["message"] == "The UI's key is accepted only from the UI", case
    # The master key does not depend on who calls.
    assert _request(stack.proxy_port, "GET", "/v1/models", CLIENT_KEY, xfcc=[xfcc(GATEWAY_ID)])[0] == 200


# Routes beyond inference: key management, the models' backends and config, spend, health
# checks that call every model, and inference the UI never uses.
UI_REFUSED = [
    ("POST", "/key/generate", {}), ("GET", "/key/list", None), ("GET", "/model/info", None),
    ("GET", "/v1/model/info", None), ("GET", "/config/yaml", None), ("POST", "/config/update", {}),
    ("GET", "/get/config/callbacks", None), ("GET", "/health", None), ("GET", "/global/spend/logs", None),
    ("GET", "/user/info", None), ("POST", "/v1/completions", {"model": "tinyllama", "prompt": "Hi"}),
    ("POST", "/v1/responses", {"model": "tinyllama", "input": "Hi"}),
    # The UI embeds with a local model (tests/program/test_security.py: no embedding engine is set).
    ("POST", "/v1/embeddings", {"model": "tinyllama", "input": "Hi"}),
    ("POST", "/embeddings", {"model": "tinyllama", "input": "Hi"}),
]


@pytest.mark.parametrize("method, path, body", UI_REFUSED, ids=[f"{m} {p}" for m, p, _ in UI_REFUSED])
def test_the_ui_key_is_refused_beyond_inference(stack, method, path, body):
    status, answer = _request(stack.proxy_port, method, path, stack.ui_key, body, xfcc=stack.from_ui)
    assert status == 403, answer
    assert json.loads(answer)["error"]["message"] == f"The UI's key may not call {method} {path}"
    # ...where the master key is let in (no database: some answer that they need one).
    status, answer = _request(stack.proxy_port, method, path, CLIENT_KEY, body, timeout=120)
    assert status not in (401, 403), answer
    print(f"\nmaster key, {method} {path} -> {status} {answer[:120]!r}")


def test_a_key_like_the_ui_key_is_not_it(stack):
    for key in (stack.ui_key[:-1], stack.ui_key + "x", stack.ui_key[:-1] + chr(ord(stack.ui_key[-1]) ^ 1),
                stack.ui_key.upper(), "Bearer " + stack.ui_key[:-1], "sk-\u00e9" + stack.ui_key[4:]):
        status, answer = _request(stack.proxy_port, "GET", "/v1/models", key, xfcc=stack.from_ui)
        # Taken for a virtual key, which LiteLLM without a database refuses (400 "No connected db.").
        assert status in (400, 401), (key, answer)
    assert _request(stack.proxy_port, "GET", "/v1/models")[0] == 401


def test_a_budgeted_teams_key_is_held_to_its_models_then_handed_to_the_virtual_key_check(stack):
    """What the custom auth refuses a team's key it refuses a budgeted one too; what it would let
    a team's key do it leaves to LiteLLM's own auth, which looks the key up in its database (here
    there is none, so LiteLLM refuses it: never answered by the model)."""
    for path, body in (("/v1/chat/completions", _chat("tinyllama")),
                       ("/v1/chat/completions", {**_chat("qwen"), "fallbacks": ["tinyllama"]}),
                       ("/key/generate", {})):
        status, answer = _request(stack.proxy_port, "POST", path, BUDGETED_KEY, body)
        assert status == 403, (path, status, answer)
    for method, path, body in (("POST", "/v1/chat/completions", _chat("qwen")), ("GET", "/v1/models", None)):
        status, answer = _request(stack.proxy_port, method, path, BUDGETED_KEY, body)
        assert status in (400, 401) and b"db" in answer.lower(), (path, status, answer)


def test_a_model_in_the_query_string_is_refused_for_every_key(stack):
    """LiteLLM checks a virtual key's models against the body's `model` and then serves the query
    string's: the custom auth refuses that split for any key, the master key's included."""
    for path in ("/v1/chat/completions?model=qwen", "/chat/completions?model=tinyllama",
                 "/v1/images/generations?model=gpt-mini"):
        status, body = _request(stack.proxy_port, "POST", path, CLIENT_KEY, _chat("tinyllama"))
        assert status == 403 and b"query string" in body, (path, status, body)


def test_a_priced_model_spends_by_its_price(stack):
    """What each request costs (the price in US dollars per million tokens), the figure a virtual
    key's budget is held to; an unpriced model's requests cost nothing."""
    status, headers, body = _exchange(stack.proxy_port, "POST", "/v1/chat/completions", CLIENT_KEY, _chat("tinyllama"))
    assert status == 200, body
    usage = json.loads(body)["usage"]
    price = MODELS[0]["price"]
    expected = (usage["prompt_tokens"] * price["input"] + usage["completion_tokens"] * price["output"]) / 1e6
    assert expected > 0 and float(headers["x-litellm-response-cost"]) == pytest.approx(expected, rel=1e-6)
    status, headers, body = _exchange(stack.proxy_port, "POST", "/v1/chat/completions", CLIENT_KEY, _chat("qwen"))
    assert status == 200, body
    assert float(headers.get("x-litellm-response-cost") or 0) == 0


def test_the_team_budgets_script_names_the_proxys_refusal_and_never_a_key(stack, tmp_path):
    """Beside a proxy without its database the script cannot register a key: it says why in one
    line (the proxy's own answer) and writes out no key."""
    team_key = "sk-team-" + "k3y" * 12
    env = {"PATH": os.environ.get("PATH", ""), "LITELLM_MASTER_KEY": CLIENT_KEY,
           front_door.TEAM_BUDGETS_ENV: json.dumps({TEAM: {
               "key": team_key, "models": ["qwen"], "max_budget": 5.0, "budget_duration": "30d",
               "rpm_limit": None, "tpm_limit": None}}),
           "LITELLM_PROXY_URL": f"http://127.0.0.1:{stack.proxy_port}"}
    script = ROOT / "components" / "edge" / "files" / front_door.TEAM_BUDGETS_FILE
    done = subprocess.run([str(LITELLM_PYTHON), str(script), "--once"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("team-budgets: not in place yet: GET /key/list: 500 ") and "Database not connected" in line, line
    assert team_key not in done.stdout + done.stderr and CLIENT_KEY not in done.stdout + done.stderr


def test_the_master_key_still_opens_everything(stack):
    for method, path, body in (("GET", "/v1/models", None), ("GET", "/model/info", None),
                               ("POST", "/v1/chat/completions", _chat("tinyllama"))):
        status, answer = _request(stack.proxy_port, method, path, CLIENT_KEY, body)
        assert status == 200, answer


def _stream(port: int, key: str, model: str, max_tokens: int, xfcc: Sequence[str] = ()) -> tuple[float, int, bool]:
    """One streamed completion: (seconds to the first content chunk, content chunks, ended with [DONE])."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    start = time.perf_counter()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    if xfcc:
        headers["x-forwarded-client-cert"] = xfcc[0]
    conn.request("POST", "/v1/chat/completions", body=json.dumps(_chat(model, True, max_tokens)), headers=headers)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    first, chunks, done = None, 0, False
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            done = True
            break
        delta = json.loads(data)["choices"][0]["delta"] if json.loads(data)["choices"] else {}
        if delta.get("content"):
            chunks += 1
            if first is None:
                first = time.perf_counter() - start
    conn.close()
    return (first if first is not None else float("nan")), chunks, done


def test_streams_chunk_by_chunk_then_done(stack):
    _, chunks, done = _stream(stack.proxy_port, CLIENT_KEY, "qwen", 16)
    assert chunks >= 2 and done


def test_unknown_model_is_a_clear_4xx(stack):
    status, body = _request(stack.proxy_port, "POST", "/v1/chat/completions", CLIENT_KEY, _chat("no-such-model"))
    assert 400 <= status < 500, body
    text = body.decode()
    assert "no-such-model" in text
    # What LiteLLM says, for docs/front-door.md.
    print(f"\nunknown model -> {status}: {text[:400]}")


def test_metrics_served_to_a_scraper_without_the_master_key(stack):
    assert _request(stack.proxy_port, "POST", "/v1/chat/completions", CLIENT_KEY, _chat("tinyllama"))[0] == 200
    status, body = _request(stack.proxy_port, "GET", front_door.METRICS_PATH)
    assert status == 200
    assert re.search(r'^litellm_\w+\{.*model="tinyllama"', body.decode(), re.M), body.decode()[-2000:]


def test_the_count_that_wakes_a_server_at_zero_is_reported_by_model(stack):
    """KEDA brings a scaled-to-zero server back on this counter, by the model a client asked for."""
    from components.serving.autoscaling import FRONT_DOOR_REQUESTS

    assert _request(stack.proxy_port, "POST", "/v1/chat/completions", CLIENT_KEY, _chat("tinyllama"))[0] == 200
    body = _request(stack.proxy_port, "GET", front_door.METRICS_PATH)[1].decode()
    assert re.search(rf'^{FRONT_DOOR_REQUESTS}\{{.*requested_model="tinyllama".*\}} [1-9]', body, re.M), \
        [line for line in body.splitlines() if "total_requests" in line]


def test_the_headers_the_gateway_strips_are_the_ones_litellm_sends(stack):
    """What LiteLLM answers, streamed or not, failed or not: each header that names the model
    server's address, LiteLLM's release or the server's software is one the gateway removes."""
    port = stack.servers["tinyllama"]
    internal = (f"127.0.0.1:{port}", front_door.LITELLM_VERSION, "llama.cpp")
    sent: dict[str, str] = {}
    for body in (_chat("tinyllama"), _chat("tinyllama", stream=True)):
        status, headers, _ = _exchange(stack.proxy_port, "POST", "/v1/chat/completions", CLIENT_KEY, body)
        assert status == 200
        sent.update({k.lower(): v for k, v in headers.items()})
    # The server refuses (no embeddings here): its headers come back all the same.
    status, headers, _ = _exchange(stack.proxy_port, "POST", "/v1/embeddings", CLIENT_KEY,
                                   {"model": "tinyllama", "input": "Hi"})
    assert status >= 400
    sent.update({k.lower(): v for k, v in headers.items()})
    assert sent["x-litellm-model-api-base"] == f"http://127.0.0.1:{port}/v1"
    assert sent["x-litellm-version"] == front_door.LITELLM_VERSION
    assert sent["llm_provider-server"] == "llama.cpp"
    leaking = {k for k, v in sent.items() if any(text in v for text in internal)}
    assert leaking <= set(front_door.INTERNAL_RESPONSE_HEADERS), leaking


def _series(body: str) -> list[tuple[str, frozenset[str]]]:
    """Each sample line of a Prometheus text page: (metric name, label names)."""
    out = []
    for line in body.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s", line)
        if match:
            out.append((match.group(1), frozenset(re.findall(r'(\w+)="', match.group(2) or ""))))
    return out


def test_every_metric_read_is_served_with_its_labels_alone(stack):
    """The callback is on (an unknown name or label in its config would turn it off, silently),
    and serves each metric the dashboard and the autoscaler read, with the labels configured."""
    assert _request(stack.proxy_port, "POST", "/v1/chat/completions", CLIENT_KEY, _chat("tinyllama"))[0] == 200
    assert _request(stack.proxy_port, "POST", "/v1/chat/completions", CLIENT_KEY, _chat("no-such-model"))[0] == 400
    status, body = _request(stack.proxy_port, "GET", front_door.METRICS_PATH)
    assert status == 200
    served = _series(body.decode())
    for metric, labels in front_door.METRICS_LABELS.items():
        found = {names for name, names in served if re.fullmatch(rf"{metric}(_total|_bucket|_sum|_count)?", name)}
        assert found, (metric, sorted({n for n, _ in served if n.startswith("litellm_")}))
        assert found <= {frozenset(labels), frozenset(labels) | {"le"}}, (metric, found)


def test_callers_without_a_key_add_no_series(stack):
    """Refused requests, each from another User-Agent, address and made-up key, leave the set of
    series as it was: they cannot grow the proxy's memory."""
    def refused(i: int) -> None:
        headers = {"User-Agent": f"probe/{i}.{time.monotonic_ns()}", "X-Forwarded-For": f"203.0.113.{i % 250}"}
        key = None if i % 2 else f"sk-made-up-{i}-{time.monotonic_ns()}"
        status, _, answer = _exchange(stack.proxy_port, "POST", "/v1/chat/completions", key, _chat("tinyllama"),
                                      headers=headers)
        # No key: 401; any other key is looked up as a virtual key (no database: 400).
        assert status in (400, 401), answer

    def count() -> int:
        return sum(1 for line in _request(stack.proxy_port, "GET", front_door.METRICS_PATH)[1].decode().splitlines()
                   if line and not line.startswith("#"))

    for i in range(4):
        refused(i)
    before = count()
    for i in range(4, 64):
        refused(i)
    assert count() == before


# --- a pod that stops -------------------------------------------------------------------

# A stream that lasts past LiteLLM's default wait after SIGTERM (30 s), one chunk every half second.
SLOW_STREAM_CHUNKS = 68
SLOW_CHUNK_S = 0.5
SIGTERM_AFTER_CHUNKS = 2


class SlowModel(http.server.ThreadingHTTPServer):
    """An OpenAI-compatible server streaming SLOW_STREAM_CHUNKS chunks at SLOW_CHUNK_S apart: the
    real llama-server with the test model finishes a whole stream in well under a second."""

    daemon_threads = True

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()

            def send(delta: dict, finish: str | None = None) -> None:
                chunk = {"id": "chatcmpl-slow", "object": "chat.completion.chunk", "created": int(time.time()),
                         "model": request["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

            for i in range(SLOW_STREAM_CHUNKS):
                send({"content": f"c{i} "})
                time.sleep(SLOW_CHUNK_S)
            send({}, "stop")
            self.wfile.write(b"data: [DONE]\n\n")

        def log_message(self, *args) -> None:
            pass


def test_a_stream_longer_than_litellms_default_outlives_sigterm(recorded, tmp_path):
    """The rendered config and env in front of a slow model: SIGTERM (what a rollout, a scale-down
    or a drain sends after the preStop sleep) comes two chunks into a stream that still has more
    than 30 s to go; the stream ends whole, then the proxy exits without being killed."""
    if not LITELLM.exists():
        pytest.skip("needs .venv-litellm (`make setup`)")
    model = SlowModel(("127.0.0.1", 0), SlowModel.Handler)
    threading.Thread(target=model.serve_forever, daemon=True).start()
    cfg = rendered_config(recorded)
    for entry in cfg["model_list"]:
        if entry["model_name"] == MODELS[0]["name"]:
            entry["litellm_params"]["api_base"] = f"http://127.0.0.1:{model.server_address[1]}/v1"
    keys = harness.reveal(recorded.one(SECRET, "front-door-keys").inputs["stringData"])
    proxy, port, _ = start_proxy(recorded, tmp_path, cfg, keys)
    log = tmp_path / PROXY_LOG
    try:
        _wait_ready(port, front_door.READINESS_PATH, proxy, log, 180)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(_chat(MODELS[0]["name"], True)),
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        chunks, done, signalled = 0, False, None
        for raw in resp:
            line = raw.decode().strip()
            if line == "data: [DONE]":
                done = True
                break
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                chunks += 1
                if chunks == SIGTERM_AFTER_CHUNKS:
                    proxy.terminate()
                    signalled = time.monotonic()
        streamed_after = time.monotonic() - signalled
        conn.close()
        assert (chunks, done) == (SLOW_STREAM_CHUNKS, True), (
            f"{chunks} chunks, cut {streamed_after:.0f} s after SIGTERM:\n{log.read_text()[-2000:]}")
        assert streamed_after > 30
        # Nothing left in flight: the proxy exits at once, well inside the grace period (uvicorn
        # ends by raising the signal it caught again).
        assert proxy.wait(timeout=front_door.SHUTDOWN_MARGIN_SECONDS) in (0, -signal.SIGTERM), \
            log.read_text()[-2000:]
        assert "timeout graceful shutdown exceeded" not in log.read_text()
    finally:
        stop([proxy], 10)
        model.shutdown()


# --- what the front door costs -----------------------------------------------------------


# What the front door may cost at most, in CPU of its own process (LiteLLM and any workers): per
# request, and per streamed chunk beyond that. Measured on these shared 2-core machines: about
# 30-40 ms per request and 0.8-0.9 ms per chunk (what sizes docs/front-door.md's "10-30 concurrent
# streams per proxy core"). CPU time, unlike wall time, barely grows on a busier machine; the
# limits leave room for that and for slower cores, and still catch a front door several times
# as costly.
CPU_MS_PER_REQUEST_LIMIT = 150.0
CPU_MS_PER_CHUNK_LIMIT = 3.0
# Requests that pay LiteLLM's one-time costs (lazy imports, first connections) before measuring.
WARM_UP_REQUESTS = 5


def _proxy_pid(port: int) -> int:
    """The LiteLLM process listening on `port` (started by the `stack` fixture)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"litellm") for a in argv[:2]) and str(port).encode() in argv:
            return int(proc.name)
    raise AssertionError(f"no litellm process on port {port}")


def _cpu_seconds(root: int) -> float:
    """User + system CPU of `root` and its live descendants, from /proc."""
    stats: dict[int, tuple[int, int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(proc.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += [child for child, (parent, _) in stats.items() if parent == pid and child not in tree]
    return sum(stats[pid][1] for pid in tree if pid in stats) / os.sysconf("SC_CLK_TCK")


def _load(targets: list[tuple[int, str, str]], streams: int, rounds: int, max_tokens: int) -> tuple[float, int, float]:
    """`streams` concurrent streamed completions, `rounds` each, stream i to target i mod n (port,
    key, model): (p50 time to first token in ms, content chunks, seconds). A stream that fails or
    does not end with [DONE] fails the caller, not just its thread."""
    from concurrent.futures import ThreadPoolExecutor

    def worker(i: int) -> list[tuple[float, int, bool]]:
        port, key, model = targets[i % len(targets)]
        return [_stream(port, key, model, max_tokens) for _ in range(rounds)]

    start = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        results = [r for f in [pool.submit(worker, i) for i in range(streams)] for r in f.result()]
    elapsed = time.perf_counter() - start
    assert len(results) == streams * rounds
    assert all(done for _, _, done in results), "a stream ended without [DONE]"
    return statistics.median(t for t, _, _ in results) * 1000, sum(c for _, c, _ in results), elapsed


def test_a_failed_stream_fails_the_load_not_just_its_thread(stack):
    """The stream's own failure (the front door refusing the key) reaches the test, not a count
    mismatch after the threads."""
    with pytest.raises(AssertionError, match=r"assert 4\d\d == 200"):
        _load([(stack.proxy_port, "sk-not-the-key-0123456789", "tinyllama")], 2, 1, 8)


def test_front_door_cost_vs_direct(stack):
    """What the front door costs, at 1 and 16 concurrent streams, the same requests sent straight
    to the servers and through it. Asserted: every stream completes both ways, and the front
    door's own CPU per request and per chunk (from the same requests at 8 and 32 tokens) stays
    within the limits above: what sizing it needs, and what a busier machine barely changes.
    Printed (run with -s), for the table in docs/front-door.md: the added p50 time to first token and the
    throughput kept, wall-clock figures that depend on the machine's load."""
    direct = [(port, stack.server_keys[alias], alias) for alias, port in stack.servers.items()]
    via = [(stack.proxy_port, CLIENT_KEY, alias) for alias in stack.servers]
    proxy = _proxy_pid(stack.proxy_port)
    _load(via, 1, WARM_UP_REQUESTS, 8)
    lines = []
    for streams, rounds in ((1, 20), (16, 2)):
        direct_ttft, direct_chunks, direct_s = _load(direct, streams, rounds, 32)
        cpu: dict[int, tuple[float, int]] = {}
        for tokens in (8, 32):
            before = _cpu_seconds(proxy)
            via_ttft, via_chunks, via_s = _load(via, streams, rounds, tokens)
            cpu[tokens] = ((_cpu_seconds(proxy) - before) * 1000, via_chunks)
        (short_ms, short_chunks), (long_ms, long_chunks) = cpu[8], cpu[32]
        assert long_chunks > short_chunks, cpu
        per_chunk = (long_ms - short_ms) / (long_chunks - short_chunks)
        per_request = (short_ms - short_chunks * per_chunk) / (streams * rounds)
        direct_tps, via_tps = direct_chunks / direct_s, long_chunks / via_s
        lines.append(f"{streams:>2} streams: p50 TTFT direct {direct_ttft:.1f} ms, front door {via_ttft:.1f} ms "
                     f"(+{via_ttft - direct_ttft:.1f} ms); throughput direct {direct_tps:.0f} chunks/s, "
                     f"front door {via_tps:.0f} chunks/s ({100 * via_tps / direct_tps:.0f}%); front door CPU "
                     f"{per_request:.0f} ms per request + {per_chunk:.2f} ms per chunk")
        assert per_request <= CPU_MS_PER_REQUEST_LIMIT and per_chunk <= CPU_MS_PER_CHUNK_LIMIT, lines[-1]
    print("\n" + "\n".join(lines))
