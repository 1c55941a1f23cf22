"""What the edge's Envoy costs on loopback, measured once (not a test):
`python -m tests.edge_bench [--upstream llama|sse] [--streams 1,16] [--requests N] [--tokens N]`.

The same streamed chat completions go straight to the upstream (`direct`), through a plain Envoy
with one route and no filters (`plain`), through one with the key check alone (`key`), and through
Envoy as tests/edge_fragments.py configures it: key check, body-based router, routes (`edge`). The
upstream is a llama-server with the tiny model, or (`sse`) tests/edge_sse.c, which streams canned
chunks at a fixed pace for next to no CPU, so that what is measured is the proxy. Printed per
stream count and path: p50 time to the first `data:` event, p50 chunks per second per stream, the
aggregate chunk rate, and the CPU time of Envoy and of the router per 1000 chunks (and the
router's per 1000 requests), read from /proc before and after each round. The paths take turns
round by round, so a change in the machine's load hits them alike. Runs in a network namespace of
its own, as the suite does."""

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

from tests import edge_fragments as frag  # noqa: E402
from tests import edge_path as edge  # noqa: E402

CLIENT_KEY = "sk-bench-client"
BACKEND_KEY = "sk-bench-backend"
ALIAS = "bench"


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
            server = started.enter_context(edge.LlamaServer(
                ALIAS, tmp / "model", key=BACKEND_KEY, parallel=slots, extra=["-c", str(slots * (args.tokens + 64))]))
        else:
            server = started.enter_context(SseServer(tmp / "sse", args.interval_us))
        bbr = started.enter_context(edge.Bbr(tmp / "bbr"))
        model = edge.static_cluster("model", server.port)
        one_route = [frag.model_route(ALIAS, "model", BACKEND_KEY) | {"match": {"prefix": "/"}}]
        key_check = frag.api_key_filter([frag.key_digest(CLIENT_KEY)])

        def envoy(name: str, filters: list, routes: list, clusters: list) -> edge.Envoy:
            return started.enter_context(edge.Envoy(edge.bootstrap(filters, routes, clusters), tmp / name,
                                                    concurrency=args.concurrency))

        plain = envoy("plain", [], one_route, [model])
        keyed = envoy("key", [key_check], one_route, [model])
        full = envoy("edge", [key_check, frag.ext_proc_filter("bbr")], frag.routes({ALIAS: ("model", BACKEND_KEY)}),
                     [edge.static_cluster("bbr", bbr.port, http2=True), model])
        paths = {"direct": (server.port, BACKEND_KEY, ()), "plain": (plain.port, CLIENT_KEY, (plain,)),
                 "key": (keyed.port, CLIENT_KEY, (keyed,)), "edge": (full.port, CLIENT_KEY, (full, bbr))}
        for port, key, _ in paths.values():  # warm every path
            for _ in range(3):
                Case(port, key).round(1, 16)
        print(f"{'streams':>7} {'path':>6} {'p50 TTFT ms':>11} {'p50 chunk/s/stream':>18} {'chunk/s all':>11} "
              f"{'envoy CPU-ms/1k chunks':>22} {'bbr CPU-ms/1k chunks':>20} {'bbr CPU-ms/1k requests':>22}")
        for n in counts:
            cases = {name: Case(*spec) for name, spec in paths.items()}
            for _ in range(max(1, args.requests // n)):  # interleaved: drift in the machine's load hits all alike
                for case in cases.values():
                    case.round(n, args.tokens)
            for name, case in cases.items():
                r = case.summary()
                line = f"{n:>7} {name:>6} {r['ttft_ms']:>11.2f} {r['per_stream_cps']:>18.0f} {r['aggregate_cps']:>11.0f}"
                cpu = r["cpu_per_k_chunks"]
                if cpu:
                    line += f" {cpu[0]:>22.1f}"
                if len(cpu) > 1:
                    line += f" {cpu[1]:>20.2f} {r['cpu_per_k_requests'][1]:>22.0f}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
