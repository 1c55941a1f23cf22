"""What the edge costs on loopback, measured once (not a test):
`python -m tests.edge_bench [--upstream llama|sse] [--streams 1,16] [--requests N] [--tokens N]`.

The same streamed chat completions go straight to the upstream (`direct`), through a plain Envoy
with one route and no filters (`plain`), through the ingress as the program configures it (its
EnvoyFilter and HTTPRoute for a stack serving the one model, translated as istiod does by
tests/edge_istio.py: key check, body-based router, a route per model; `ingress`), and through
LiteLLM's proxy with the config the program renders for it (`litellm`, the release
.venv-litellm installs: what every token paid before). The upstream is a llama-server with the
tiny model, or (`sse`) tests/edge_sse.c, which streams canned chunks at a fixed pace for next to no
CPU, so that what is measured is the proxy. Printed per stream count and path: p50 time to the
first `data:` event, p50 chunks per second per stream, the aggregate chunk rate, and the CPU time
of the proxy (Envoy, LiteLLM) and of the body-based router per 1000 chunks (and the router's per
1000 requests), read from /proc before and after each round. The paths take turns round by round,
so a change in the machine's load hits them alike. Runs in a network namespace of its own, as the
suite does."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from tests import netns

netns.isolate()

import os  # noqa: E402

import yaml  # noqa: E402

from components.config import FrontDoorConfig  # noqa: E402
from components.edge import front_door, model_routing  # noqa: E402
from tests import edge_istio as istio  # noqa: E402
from tests import edge_path as edge  # noqa: E402
from tools import mock_engine  # noqa: E402
from tools.mock_engine import PROJECT_DIR  # noqa: E402

CLIENT_KEY = "sk-bench-client-0123456789"
BACKEND_KEY = "sk-bench-backend-0123456789"
ALIAS = "bench"
LITELLM = PROJECT_DIR / ".venv-litellm" / "bin" / "litellm"


def _stream(port: int, key: str, tokens: int, out: list, barrier: threading.Barrier) -> None:
    body = {"model": ALIAS, "messages": [{"role": "user", "content": "Count."}], "max_tokens": tokens,
            "ignore_eos": True, "stream": True}
    barrier.wait()
    start = time.perf_counter()
    conn, resp = edge.request(port, "POST", "/v1/chat/completions", body, key, timeout=120)
    first = last = None
    chunks = 0
    try:
        assert resp.status == 200, resp.read()
        for event in edge.sse_events(resp):
            if event == b"[DONE]":
                break
            last = time.perf_counter()
            chunks += 1
            first = first or last
    finally:
        conn.close()
    out.append((first - start, chunks, (chunks - 1) / (last - first) if last > first else 0.0))


class Case:
    """One path's streams, round after round, and the CPU its processes spent meanwhile."""

    def __init__(self, port: int, key: str, processes=()):
        self.port, self.key, self.processes = port, key, processes
        self.results: list = []
        self.wall = 0.0
        self.cpu = [0.0] * len(processes)

    def round(self, streams: int, tokens: int) -> None:
        barrier = threading.Barrier(streams)
        threads = [threading.Thread(target=_stream, args=(self.port, self.key, tokens, self.results, barrier))
                   for _ in range(streams)]
        before = [p.cpu_seconds() for p in self.processes]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.wall += time.perf_counter() - t0
        self.cpu = [c + p.cpu_seconds() - b for c, p, b in zip(self.cpu, self.processes, before)]

    def summary(self) -> dict:
        chunks = sum(r[1] for r in self.results)
        return {"ttft_ms": 1000 * statistics.median(r[0] for r in self.results),
                "per_stream_cps": statistics.median(r[2] for r in self.results),
                "aggregate_cps": chunks / self.wall, "chunks": chunks, "requests": len(self.results),
                # CPU-ms per 1000 chunks (= CPU-µs per chunk) and per 1000 requests.
                "cpu_per_k_chunks": [1e6 * c / chunks for c in self.cpu],
                "cpu_per_k_requests": [1e6 * c / len(self.results) for c in self.cpu]}


class SseServer(edge.Process):
    """tests/edge_sse.c, compiled here, streaming a chunk every `interval_us`."""

    name = "edge_sse"

    def __init__(self, tmp: Path, interval_us: int):
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise SystemExit("no C compiler for the SSE stand-in: use --upstream llama")
        tmp.mkdir(parents=True, exist_ok=True)
        binary = tmp / "edge_sse"
        subprocess.run([cc, "-O2", "-pthread", "-o", str(binary), str(Path(__file__).with_name("edge_sse.c"))],
                       check=True)
        self.port = edge.free_port()
        super().__init__([str(binary), str(self.port), str(interval_us)], tmp / "edge_sse.log")
        self.wait_until(lambda: socket.create_connection(("127.0.0.1", self.port), timeout=1).close() or True,
                        "its port")


def ingress_config(model_port: int, bbr_port: int, front_door_port: int, tmp: Path) -> dict:
    """The ingress's Envoy for a stack serving ALIAS alone on amd64 nodes (with the body-based
    router), from the program's own objects."""
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    rec = mock_engine.run("local", {"llm-platform:llamaRouter": {"enabled": False},
                                    "llm-platform:models": [{"name": ALIAS, "file": f"{ALIAS}.gguf"}],
                                    "llm-platform:cluster": {"kind": "existing", "kubeconfig": str(kubeconfig)},
                                    "llm-platform:apiKey": CLIENT_KEY},
                          secrets=("llm-platform:apiKey",))
    envoy_filter = rec.one("kubernetes:networking.istio.io/v1alpha3:EnvoyFilter").inputs["spec"]
    routes = rec.one("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute", "gateway-routes").inputs["spec"]
    ports = {model_routing.bbr_cluster("front-door"): bbr_port,
             **istio.stand_in_ports(routes, {ALIAS: model_port}, front_door_port, front_door_port)}
    return istio.ingress_bootstrap(envoy_filter, routes, ports, http2=[model_routing.bbr_cluster("front-door")])


class LiteLlm(edge.Process):
    """LiteLLM's proxy with the config the program renders for one model at `model_port`."""

    name = "litellm"

    def __init__(self, tmp: Path, model_port: int):
        if not LITELLM.exists():
            raise SystemExit(f"no {LITELLM}: `make setup` installs it")
        tmp.mkdir(parents=True, exist_ok=True)
        config = front_door.litellm_config([(ALIAS, f"http://127.0.0.1:{model_port}/v1")], FrontDoorConfig(), auth=True)
        (tmp / "config.yaml").write_text(yaml.safe_dump(config))
        self.port = edge.free_port()
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp), "LITELLM_LOCAL_MODEL_COST_MAP": "True",
               front_door.MASTER_KEY_ENV: CLIENT_KEY, front_door.BACKEND_KEY_ENV: BACKEND_KEY}
        super().__init__([str(LITELLM), "--config", str(tmp / "config.yaml"), "--host", "127.0.0.1",
                          "--port", str(self.port)], tmp / "litellm.log", env)
        self.wait_until(lambda: edge.call(self.port, "GET", front_door.READINESS_PATH)[0] == 200, "readiness", 180)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", default="1,16")
    ap.add_argument("--requests", type=int, default=160, help="streams per path and stream count, in rounds")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=1, help="Envoy's worker threads")
    ap.add_argument("--upstream", choices=("llama", "sse"), default="llama")
    ap.add_argument("--interval-us", type=int, default=500, help="the SSE stand-in's pace (500: 2000 chunks/s)")
    args = ap.parse_args()
    counts = [int(s) for s in args.streams.split(",")]
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp_name, contextlib.ExitStack() as started:
        tmp = Path(tmp_name)
        slots = max(counts)
        if args.upstream == "llama":
            # The client key (the ingress passes it on) and the front door's, as the program's
            # key file for the server holds them.
            keys = tmp / "keys"
            keys.write_text(f"{BACKEND_KEY}\n{CLIENT_KEY}\n")
            server = started.enter_context(edge.LlamaServer(
                ALIAS, tmp / "model", parallel=slots,
                extra=["-c", str(slots * (args.tokens + 64)), "--api-key-file", str(keys)]))
        else:
            server = started.enter_context(SseServer(tmp / "sse", args.interval_us))
        bbr = started.enter_context(edge.Bbr(tmp / "bbr"))
        litellm = started.enter_context(LiteLlm(tmp / "litellm", server.port))

        def envoy(name: str, config: dict) -> edge.Envoy:
            return started.enter_context(edge.Envoy(config, tmp / name, concurrency=args.concurrency))

        plain = envoy("plain", edge.bootstrap([], [{"match": {"prefix": "/"}, "route": {"cluster": "model", "timeout": "0s"}}],
                                              [edge.static_cluster("model", server.port)]))
        ingress = envoy("ingress", ingress_config(server.port, bbr.port, litellm.port, tmp))
        paths = {"direct": (server.port, CLIENT_KEY, ()), "plain": (plain.port, CLIENT_KEY, (plain,)),
                 "ingress": (ingress.port, CLIENT_KEY, (ingress, bbr)), "litellm": (litellm.port, CLIENT_KEY, (litellm,))}
        for port, key, _ in paths.values():  # warm every path
            for _ in range(3):
                Case(port, key).round(1, 16)
        print(f"{'streams':>7} {'path':>7} {'p50 TTFT ms':>11} {'p50 chunk/s/stream':>18} {'chunk/s all':>11} "
              f"{'proxy CPU-ms/1k chunks':>22} {'bbr CPU-ms/1k chunks':>20} {'bbr CPU-ms/1k requests':>22}")
        for n in counts:
            cases = {name: Case(*spec) for name, spec in paths.items()}
            for _ in range(max(1, args.requests // n)):  # interleaved: drift in the machine's load hits all alike
                for case in cases.values():
                    case.round(n, args.tokens)
            for name, case in cases.items():
                r = case.summary()
                line = f"{n:>7} {name:>7} {r['ttft_ms']:>11.2f} {r['per_stream_cps']:>18.0f} {r['aggregate_cps']:>11.0f}"
                cpu = r["cpu_per_k_chunks"]
                if cpu:
                    line += f" {cpu[0]:>22.1f}"
                if len(cpu) > 1:
                    line += f" {cpu[1]:>20.2f} {r['cpu_per_k_requests'][1]:>22.0f}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
