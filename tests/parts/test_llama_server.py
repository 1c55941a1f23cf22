"""The real llama.cpp server, started with exactly the args and env the local stack renders.

Only what cannot exist here is mapped: the model path under /mnt/models becomes the tiny test
model, the API-key file path a temporary file holding the rendered keys, and --host/--port loopback
and a free port. Everything the pod relies on is then asked of the server itself: probes, keys,
the model id, streaming, metrics, context and threads, and draining on shutdown.
"""

from __future__ import annotations

import functools
import http.client
import json
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from components.serving.runtimes import API_KEYS_MOUNT, LLAMA_CPP_BUILD, MODELS_MOUNT
from tests.shared import LLAMA_SERVER, SHARED, TINY_MODEL
from tests.conftest import PODS
from tools import mock_engine as harness

BINARY, MODEL = LLAMA_SERVER, TINY_MODEL
CLIENT_KEY = "sk-client-key-0123456789abcdef"
# Long enough to still be generating when the pod is told to stop, short enough to keep the
# suite quick (the tiny model's context is 2048 tokens).
LONG_REPLY_TOKENS = 1200

pytestmark = pytest.mark.skipif(not BINARY.exists(), reason=f"no llama-server binary at {BINARY}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def _render(accelerator: str) -> dict:
    """The local stack's model server with a known client key, on the Mac GPU (the stack file's
    `vulkan`: RamaLama's image) or on CPU (`none`: ggml-org's image of the build run here), one
    pod per model (tests/parts/test_llama_router.py runs the router)."""
    rec = harness.run("local", {**PODS, "llm-platform:apiKey": CLIENT_KEY,
                                "llm-platform:accelerator": {"kind": accelerator}},
                      secrets=("llm-platform:apiKey",))
    (server,) = rec.model_servers()
    template = harness.reveal(server.inputs["spec"]["template"])
    secret = next(r for r in rec.of_type("kubernetes:core/v1:Secret") if r.name.endswith("-api-keys"))
    secret_data = harness.reveal(secret.inputs["stringData"])
    # What Prometheus scrapes: the endpoint of the server's ServiceMonitor, its key from the
    # Secret the endpoint names.
    (monitor,) = [r for r in rec.of_type("kubernetes:monitoring.coreos.com/v1:ServiceMonitor")
                  if r.name.startswith("monitoring-model-")]
    (endpoint,) = harness.reveal(monitor.inputs["spec"]["endpoints"])
    ref = endpoint["authorization"]["credentials"]
    scrape_secret = next(r for r in rec.of_type("kubernetes:core/v1:Secret")
                         if harness.reveal(r.inputs["metadata"])["name"] == ref["name"])
    return {
        "scrape_path": endpoint["path"],
        "scrape_key": harness.reveal(scrape_secret.inputs["stringData"])[ref["key"]],
        "container": template["spec"]["containers"][0],
        "secret_data": secret_data,
        # The front door's key: the one key the server accepts.
        "key": secret_data["front-door"],
        "aliases": rec.outputs["modelAliases"],
    }


@pytest.fixture(scope="module", params=["vulkan", "none"])
def rendered(request):
    return _render(request.param)


@pytest.fixture(scope="module")
def rendered_gpu():
    return _render("vulkan")


def test_cpu_image_is_the_build_run_here():
    c = _render("none")["container"]
    assert c["image"] == f"ghcr.io/ggml-org/llama.cpp:server-{LLAMA_CPP_BUILD}" and "command" not in c
    notes = SHARED / "bin" / "README.md"
    if not notes.is_file():
        pytest.skip(f"{notes} absent: the build run here cannot be read")
    assert LLAMA_CPP_BUILD in notes.read_text()


def _mapped(container: dict, port: int, key_file: Path) -> list[str]:
    """The rendered args with the four pod-only values mapped; every other arg as rendered."""
    args, out, mapped = list(container["args"]), [], set()
    for i, arg in enumerate(args):
        prev = args[i - 1] if i else None
        if prev in ("-m", "--model") and arg.startswith(MODELS_MOUNT + "/"):
            arg = str(MODEL)
        elif prev == "--api-key-file" and arg.startswith(API_KEYS_MOUNT + "/"):
            arg = str(key_file)
        elif prev == "--host":
            arg = "127.0.0.1"
        elif prev == "--port":
            arg = str(port)
        else:
            out.append(arg)
            continue
        mapped.add(prev)
        out.append(arg)
    assert mapped >= {"--host", "--port", "--api-key-file"} and mapped & {"-m", "--model"}, mapped
    return out


class Server:
    """One llama-server process as the pod would run it, and a log of /health while it loads."""

    def __init__(self, rendered: dict, tmp: Path):
        self.port = _free_port()
        key_file = tmp / "keys"
        # The Secret's entry the pod mounts, written as the kubelet would.
        key_file.write_text(rendered["secret_data"]["keys"])
        self.key_file = key_file
        self.key = rendered["key"]
        container = rendered["container"]
        env = {e["name"]: e["value"] for e in container.get("env") or []}
        self.log = tmp / f"server-{self.port}.log"
        self.proc = subprocess.Popen([str(BINARY), *_mapped(container, self.port, key_file)],
                                     env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        self.health_seen = self._wait_ready(container["startupProbe"]["httpGet"]["path"])

    def _wait_ready(self, path: str, timeout_s: float = 30) -> list[int]:
        """Poll as fast as possible from launch: the statuses the startup probe would see."""
        seen, deadline = [], time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                status = self.get(path)[0]
            except OSError:
                continue  # not listening yet
            seen.append(status)
            if status == 200:
                return seen
        raise AssertionError(f"never ready: {seen[-5:]}\n{self.log.read_text()[-2000:]}")

    def request(self, method: str, path: str, key: str | None = None, body: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        conn.request(method, path, body=json.dumps(body) if body else None, headers=headers)
        return conn, conn.getresponse()

    def get(self, path: str, key: str | None = None) -> tuple[int, str]:
        conn, resp = self.request("GET", path, key)
        try:
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def post(self, path: str, body: dict, key: str | None = None) -> tuple[int, dict]:
        conn, resp = self.request("POST", path, key, body)
        try:
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def server(rendered, tmp_path_factory):
    srv = Server(rendered, tmp_path_factory.mktemp("llama-server"))
    yield srv
    srv.stop()


def _chat(alias: str, **extra) -> dict:
    return {"model": alias, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, **extra}


# --- what the pod and its callers rely on ---------------------------------------------------


def test_probes_see_503_while_loading_then_200(server, rendered):
    c = rendered["container"]
    port_name = c["startupProbe"]["httpGet"]["port"]
    assert next(p for p in c["ports"] if p["name"] == port_name)["containerPort"] == int(
        c["args"][c["args"].index("--port") + 1])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == c["startupProbe"]["httpGet"]["path"]
    # Polled from launch: only "loading" (503) answers, then ready (200); the probe needs no key.
    assert set(server.health_seen) <= {503, 200} and server.health_seen[-1] == 200
    assert 503 in server.health_seen, f"loading was never observed: {server.health_seen}"
    assert server.get(c["readinessProbe"]["httpGet"]["path"])[0] == 200


def test_chat_needs_a_key_it_holds(server, rendered):
    """A model server takes the front door's key and the client key (the ingress passes it on with
    the requests it routes straight), nothing else."""
    alias = rendered["aliases"][0]
    assert server.post("/v1/chat/completions", _chat(alias))[0] == 401
    assert server.post("/v1/chat/completions", _chat(alias), key="not-a-key")[0] == 401
    assert server.post("/v1/chat/completions", _chat(alias), key=CLIENT_KEY + "x")[0] == 401
    assert server.post("/v1/chat/completions", _chat(alias), key=CLIENT_KEY)[0] == 200
    status, body = server.post("/v1/chat/completions", _chat(alias), key=server.key)
    assert status == 200, body
    assert body["choices"][0]["message"]["role"] == "assistant"


def test_model_id_is_the_published_alias(server, rendered):
    alias = rendered["aliases"][0]
    status, body = server.get("/v1/models", key=server.key)
    assert status == 200
    assert [m["id"] for m in json.loads(body)["data"]] == [alias]
    assert server.post("/v1/chat/completions", _chat(alias), key=server.key)[1]["model"] == alias


def test_model_list_needs_the_key_too(server):
    # This build keeps only the health paths public.
    assert server.get("/v1/models")[0] == 401
    assert server.get("/models")[0] == 401


def test_streaming_sends_chunks_then_done(server, rendered):
    conn, resp = server.request("POST", "/v1/chat/completions", server.key,
                                _chat(rendered["aliases"][0], stream=True, max_tokens=16))
    try:
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
        events = [line[len(b"data: "):].strip() for line in resp.read().splitlines() if line.startswith(b"data: ")]
    finally:
        conn.close()
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) > 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_metrics_are_served_with_the_key(server, rendered):
    assert "--metrics" in rendered["container"]["args"]
    assert server.get("/metrics")[0] == 401
    status, text = server.get("/metrics", key=server.key)
    assert status == 200
    # What the preStop drain reads.
    assert "llamacpp:requests_processing " in text and "llamacpp:requests_deferred " in text
    # The queue KEDA scales llama.cpp servers on: a gauge the real server reports.
    from components.serving.autoscaling import QUEUE_METRIC
    metric = QUEUE_METRIC["llama-cpp"]
    assert f"# TYPE {metric} gauge" in text and f"\n{metric} " in text


def test_prometheus_scrape_returns_what_the_dashboard_queries(server, rendered):
    """Prometheus's request as its ServiceMonitor makes it (path, key from the named Secret)
    is answered, with every llamacpp:* series the llama.cpp dashboard queries."""
    from components.platform.monitoring import DASHBOARDS_DIR

    assert server.get(rendered["scrape_path"])[0] == 401
    status, text = server.get(rendered["scrape_path"], key=rendered["scrape_key"])
    assert status == 200
    served = {line.split()[0].split("{")[0] for line in text.splitlines() if line and not line.startswith("#")}
    used = set(re.findall(r"llamacpp:[a-z_]+", (DASHBOARDS_DIR / "llamacpp.json").read_text()))
    assert used and used <= served, used - served


def test_context_comes_from_the_model_and_threads_from_the_cpu_limit(server, rendered):
    args = rendered["container"]["args"]
    meta = json.loads(server.get("/v1/models", key=server.key)[1])["data"][0]["meta"]
    assert args[args.index("--ctx-size") + 1] == "0" and meta["n_ctx"] == meta["n_ctx_train"]
    threads = args[args.index("--threads") + 1]
    assert threads == rendered["container"]["resources"]["limits"]["cpu"]
    assert f"n_threads = {threads}" in server.log.read_text()


# --- shutdown: SIGTERM aborts generations; the preStop lets them finish --------------------


def _long_stream(srv: Server, alias: str):
    conn, resp = srv.request("POST", "/v1/chat/completions", srv.key, _chat(
        alias, stream=True, max_tokens=LONG_REPLY_TOKENS, ignore_eos=True))
    assert resp.status == 200
    for _ in range(5):  # generating, not just accepted
        assert resp.readline().startswith(b"data: ") and resp.readline() == b"\n"
    return conn, resp


def _rest_of_stream(conn, resp, idle_s: float = 3) -> list[bytes]:
    """The stream's remaining events until it ends, breaks, or goes quiet for `idle_s` (after
    SIGTERM llama-server may stop generating yet keep the connection open until it is killed)."""
    conn.sock.settimeout(idle_s)
    lines = []
    try:
        while line := resp.readline():
            lines.append(line)
    except (TimeoutError, http.client.IncompleteRead, ConnectionError):
        pass
    return [line.strip() for line in lines if line.startswith(b"data: ")]


def _pre_stop(container: dict, srv: Server) -> list[str]:
    """The preStop command as rendered, its pause, port and key file mapped like the args."""
    command = list(container["lifecycle"]["preStop"]["exec"]["command"])
    assert command[:2] == ["sh", "-c"]
    pause, port, key_file, bound = command[4:]
    assert port == container["args"][container["args"].index("--port") + 1]
    assert key_file == container["args"][container["args"].index("--api-key-file") + 1]
    assert int(pause) > 0 and int(bound) > 0
    return command[:4] + ["0", str(srv.port), str(srv.key_file), bound]


def _stop_as_the_kubelet_does(srv: Server, hook_command: list[str], conn, resp) -> None:
    """Run the preStop hook, SIGTERM once it returns (as the kubelet does), and require that the
    stream in flight still ended with its final event."""
    started = time.monotonic()
    hook = subprocess.run(hook_command, capture_output=True, timeout=120)
    waited = time.monotonic() - started
    assert hook.returncode == 0, hook.stderr
    srv.proc.send_signal(signal.SIGTERM)
    events = _rest_of_stream(conn, resp)
    conn.close()
    assert events and events[-1] == b"data: [DONE]", f"stream cut after the hook returned ({waited:.1f}s)"


@pytest.fixture
def fresh_server(rendered_gpu, tmp_path):
    srv = Server(rendered_gpu, tmp_path)
    yield srv
    srv.stop()


def test_sigterm_alone_cuts_a_generation_in_flight(fresh_server, rendered_gpu):
    """Without the drain: what the pod would do if SIGTERM came right after the pause."""
    conn, resp = _long_stream(fresh_server, rendered_gpu["aliases"][0])
    fresh_server.proc.send_signal(signal.SIGTERM)
    events = _rest_of_stream(conn, resp)
    conn.close()
    assert b"data: [DONE]" not in events


def test_pre_stop_lets_the_generation_finish_before_sigterm(fresh_server, rendered_gpu):
    conn, resp = _long_stream(fresh_server, rendered_gpu["aliases"][0])
    _stop_as_the_kubelet_does(fresh_server, _pre_stop(rendered_gpu["container"], fresh_server), conn, resp)


def _processing(srv: Server) -> int:
    """Requests the server is generating, by its own /metrics (asked with the key it read at start)."""
    status, text = srv.get("/metrics", key=srv.key)
    assert status == 200, text
    (value,) = re.findall(r"^llamacpp:requests_processing (\S+)$", text, re.M)
    return int(float(value))


def test_pre_stop_drains_even_after_the_mounted_key_rotated(fresh_server, rendered_gpu):
    """A new key rolls the pods, but by then the kubelet has already refreshed the mounted key
    file: the old server refuses it on /metrics. The hook must not read that as idle: with a
    generation in flight it can only wait out its whole bound. Measured as that, not against
    how long the generation takes here: the generation is running when the hook starts, and the
    hook returns no sooner than its bound allows (whole seconds: `date +%s`)."""
    conn, resp = _long_stream(fresh_server, rendered_gpu["aliases"][0])
    fresh_server.key_file.write_text("rotated-front-door-key\n")
    bound = 4
    command = _pre_stop(rendered_gpu["container"], fresh_server)
    command[-1] = str(bound)
    assert _processing(fresh_server) == 1, "the generation ended before the hook could wait"
    started = time.monotonic()
    hook = subprocess.run(command, capture_output=True, timeout=60)
    waited = time.monotonic() - started
    assert hook.returncode == 0, hook.stderr
    assert waited >= bound - 1, f"the hook returned after {waited:.1f}s of its {bound}s: it read a refused /metrics as idle"
    fresh_server.proc.send_signal(signal.SIGTERM)
    conn.close()
