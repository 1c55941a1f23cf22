"""The edge's data path started for real on loopback: Envoy with a given bootstrap, the Gateway API
Inference Extension's body-based router (BBR) as Envoy's external processor, and llama-servers as
the models. Test support only: the tests decide what Envoy is configured with.

Every process runs in its own process group and is stopped with it (SIGTERM, then SIGKILL), by the
fixture that started it or, failing that, when the interpreter exits. Each waits for its own
readiness: Envoy's admin `/ready`, BBR's gRPC port, llama-server's `/health`.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional

import yaml

from components.edge import model_routing
from tests.shared import LLAMA_SERVER, TINY_MODEL
from tools import edge_tools

MODEL_HEADER = model_routing.MODEL_HEADER
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_live: set["Process"] = set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port where nothing listens, for as long as the block runs: held bound without
    listening, so a connection to it is refused, and no other process (a test on the other worker)
    can start listening there, as it could on a port `free_port` gave back."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


class Process:
    """One child process, its log, and its CPU time."""

    name = "process"

    def __init__(self, argv: list[str], log: Path, env: Optional[dict] = None):
        self.argv, self.log = argv, log
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        _live.add(self)

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")

    def wait_until(self, ready, what: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.alive()
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: {what} not seen in {timeout_s}s:\n{self.tail()}")

    def cpu_seconds(self) -> float:
        """CPU time the process has spent so far: its threads' run time from /proc (nanoseconds,
        schedstat), else user + system time from /proc/<pid>/stat (clock ticks, 10 ms here)."""
        try:
            return sum(int((task / "schedstat").read_text().split()[0])
                       for task in Path(f"/proc/{self.proc.pid}/task").iterdir()) / 1e9
        except (OSError, ValueError, IndexError):
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime

    def stop(self) -> None:
        _live.discard(self)
        if self.proc.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:
            try:  # anything the process left behind in its group
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@atexit.register
def _stop_all() -> None:
    for p in list(_live):
        p.stop()


# --- HTTP on loopback ------------------------------------------------------------------------


def request(port: int, method: str, path: str, body=None, key: Optional[str] = None,
            headers: Optional[dict] = None, timeout: float = 30) -> tuple[http.client.HTTPConnection,
                                                                          http.client.HTTPResponse]:
    """A request on loopback; `body` is JSON unless it is bytes. The caller reads and closes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=sent)
    return conn, conn.getresponse()


def call(port: int, method: str, path: str, body=None, key: Optional[str] = None,
         headers: Optional[dict] = None) -> tuple[int, bytes, http.client.HTTPMessage]:
    conn, resp = request(port, method, path, body, key, headers)
    try:
        return resp.status, resp.read(), resp.headers
    finally:
        conn.close()


def sse_events(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    """The `data:` payloads of a server-sent event stream as they arrive."""
    while line := resp.readline():
        if line.startswith(b"data: "):
            yield line[len(b"data: "):].strip()


def streamed_chunks(port: int, path: str, body, key: Optional[str] = None) -> list[dict]:
    """POST `body` (a request for a stream) and read the answer to its end: it must be 200 and
    server-sent events ending with `[DONE]`; the JSON chunks before it."""
    conn, resp = request(port, "POST", path, body, key)
    try:
        assert resp.status == 200 and resp.getheader("content-type", "").startswith("text/event-stream")
        events = list(sse_events(resp))
    finally:
        conn.close()
    assert events and events[-1] == b"[DONE]", events[-3:]
    return [json.loads(e) for e in events[:-1]]


# --- Envoy -----------------------------------------------------------------------------------


ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def bootstrap(http_filters: Iterable[dict], routes: Iterable[dict], clusters: Iterable[dict],
              listener_port: int = 0) -> dict:
    """A bootstrap with one loopback listener: an HTTP connection manager running `http_filters`
    (the router is added last) over one virtual host of `routes`, and `clusters` as static
    resources. The admin interface is the harness's (Envoy below puts it on loopback)."""
    filters = [f for f in http_filters if f["name"] != ROUTER["name"]] + [ROUTER]
    return {
        "static_resources": {
            "listeners": [{
                "name": "edge",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": _HCM,
                        "stat_prefix": "edge",
                        "route_config": {"name": "edge", "virtual_hosts": [
                            {"name": "edge", "domains": ["*"], "routes": list(routes)}]},
                        "http_filters": filters,
                    },
                }]}],
            }],
            "clusters": list(clusters),
        },
    }


def static_cluster(name: str, port: int, http2: bool = False, host: str = "127.0.0.1") -> dict:
    """A cluster of one loopback endpoint; `http2` for a gRPC server (an external processor)."""
    cluster = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}]},
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    return cluster


class Envoy(Process):
    """Envoy (the pinned release) running `config` (a bootstrap, as a dict or YAML), ready once its
    admin interface says LIVE; `port` is its first listener's, read back from the admin interface
    (a listener on port 0 gets a free one). The admin interface is always the harness's own, on
    loopback."""

    name = "envoy"

    def __init__(self, config: dict | str, tmp: Path, concurrency: int = 1, log_level: str = "warning"):
        binary = edge_tools.envoy_binary()
        if binary is None:
            raise RuntimeError(edge_tools.missing())
        if isinstance(config, str):
            config = yaml.safe_load(config)
        tmp.mkdir(parents=True, exist_ok=True)
        config = {**config, "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}}
        self.config_file = tmp / "envoy.json"
        self.config_file.write_text(json.dumps(config, indent=1))
        address_file = tmp / "admin-address"
        address_file.unlink(missing_ok=True)
        super().__init__([str(binary), "-c", str(self.config_file), "--disable-hot-restart",
                          "--concurrency", str(concurrency), "-l", log_level,
                          "--admin-address-path", str(address_file)], tmp / "envoy.log")
        self.wait_until(lambda: address_file.is_file() and address_file.read_text().strip(), "its admin address")
        self.admin_port = int(address_file.read_text().strip().rsplit(":", 1)[1])
        self.wait_until(lambda: self.admin("/ready")[0] == 200, "admin /ready")
        listeners = json.loads(self.admin("/listeners?format=json")[1])["listener_statuses"]
        self.port = listeners[0]["local_address"]["socket_address"]["port_value"]

    def admin(self, path: str) -> tuple[int, str]:
        status, body, _ = call(self.admin_port, "GET", path)
        return status, body.decode()

    def stats(self, filter_regex: str) -> dict[str, int]:
        text = self.admin(f"/stats?filter={filter_regex}")[1]
        return {k: int(v) for k, _, v in (line.partition(": ") for line in text.splitlines()) if v.isdigit()}


# --- the body-based router -------------------------------------------------------------------


def bbr_argv(grpc_port: int, health_port: int, metrics_port: int) -> list[str]:
    """BBR's command line as the program's Deployment runs it, on the given ports."""
    return [str(edge_tools.binary(edge_tools.BBR)), *model_routing.bbr_args(grpc_port, health_port, metrics_port)]


def unreachable_kubeconfig(path: Path) -> Path:
    """The kubeconfig the program gives BBR's pod: an API server nothing answers for (BBR's manager
    insists on a REST config at start, but with only the body-field plugin it never calls)."""
    path.write_text(model_routing.idle_kubeconfig())
    return path


class Bbr(Process):
    """The body-based router on loopback, ready once its ext_proc gRPC port accepts."""

    name = "bbr"

    def __init__(self, tmp: Path):
        why = edge_tools.missing(edge_tools.BBR, envoy=False)
        if why:
            raise RuntimeError(why)
        tmp.mkdir(parents=True, exist_ok=True)
        self.port, self.health_port, self.metrics_port = free_port(), free_port(), free_port()
        env = {"PATH": os.environ.get("PATH", ""), "KUBECONFIG": str(unreachable_kubeconfig(tmp / "kubeconfig"))}
        super().__init__(bbr_argv(self.port, self.health_port, self.metrics_port), tmp / "bbr.log", env)
        self.wait_until(lambda: socket.create_connection(("127.0.0.1", self.port), timeout=1).close() or True,
                        "its gRPC port")


# --- llama-servers ---------------------------------------------------------------------------


class LlamaServer(Process):
    """llama-server with the tiny model under `alias` (its model id), ready once /health says
    200; with `key`, it accepts only that key (`--api-key-file`, as the pods run it)."""

    name = "llama-server"

    def __init__(self, alias: str, tmp: Path, key: Optional[str] = None, parallel: int = 4,
                 extra: Iterable[str] = ()):
        tmp.mkdir(parents=True, exist_ok=True)
        self.alias, self.key, self.port = alias, key, free_port()
        argv = [str(LLAMA_SERVER), "-m", str(TINY_MODEL), "--alias", alias, "--host", "127.0.0.1",
                "--port", str(self.port), "--threads", "1", "--parallel", str(parallel), *extra]
        if key is not None:
            key_file = tmp / f"{alias}.keys"
            key_file.write_text(key + "\n")
            argv += ["--api-key-file", str(key_file)]
        super().__init__(argv, tmp / f"{alias}.log")
        self.wait_until(lambda: call(self.port, "GET", "/health")[0] == 200, "/health 200")


def missing_llama_server() -> Optional[str]:
    for path in (LLAMA_SERVER, TINY_MODEL):
        if not path.exists():
            return f"no {path.name} at {path}"
    return None
