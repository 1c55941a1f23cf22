"""How AIPerf is run: its virtualenv, one config file per run, a progress bar from its records."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tools.loadtest.check import RECORDS

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-loadtest"
AIPERF = VENV / "bin" / "aiperf"
PYTHON = VENV / "bin" / "python"
# Built once per virtualenv from the corpus of the AIPerf release installed there.
WORD_TOKENIZER = VENV / "word-tokenizer"
# The key reaches AIPerf through its environment (the config names the variable), never an argument.
KEY_ENV = "LOADTEST_API_KEY"
VERSION = "0.13.0"


class ToolMissing(RuntimeError):
    pass


def ensure_installed() -> None:
    if not AIPERF.exists():
        raise ToolMissing(f"{AIPERF.relative_to(ROOT)} is missing: run `make .venv-loadtest/.installed` "
                          "(AIPerf and matplotlib in their own virtualenv)")


def word_tokenizer() -> Path:
    if not (WORD_TOKENIZER / "tokenizer.json").exists():
        subprocess.run([str(PYTHON), "-m", "tools.loadtest.wordtok", str(WORD_TOKENIZER)], cwd=ROOT,
                       check=True, capture_output=True)
    return WORD_TOKENIZER


@dataclass(frozen=True)
class Workload:
    input_tokens: int
    output_tokens: int
    # Keep generating to output_tokens even past an end-of-sequence token (vLLM, llama.cpp).
    ignore_eos: bool
    timeout_s: float
    # The run's seed; each level of each series draws its prompts from a seed derived from it.
    seed: int
    tokenizer: str
    # "pooled": keep-alive connections, as SDK clients do; "never": a new connection per request.
    connections: str = "pooled"


def level_seed(run_seed: int, series: str, concurrency: int) -> int:
    """A seed of its own for each level of each series: prompts seen before would be answered
    from the server's prompt cache (llama.cpp, vLLM prefix caching), flattering the figures."""
    digest = hashlib.sha256(f"{run_seed}/{series}/{concurrency}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def config(url: str, model: str, concurrency: int, requests: int, warmup: int, work: Workload,
           artifacts: Path, with_key: bool, seed: int) -> dict:
    """AIPerf's YAML config (written as JSON, which YAML reads) for one concurrency level.
    Warm-ups and measured requests take the dataset's entries in order, one each, so no prompt
    is sent twice within a level."""
    endpoint = {
        "url": url, "type": "chat", "streaming": True, "timeout": work.timeout_s,
        # Token counts from the server's own `usage`, not from the client-side tokenizer.
        "useServerTokenCount": True,
        "connectionReuse": work.connections,
    }
    if with_key:
        endpoint["apiKey"] = "${%s}" % KEY_ENV
    if work.ignore_eos:
        endpoint["extra"] = {"ignore_eos": True}
    bench = {
        "model": model,
        "endpoint": endpoint,
        "tokenizer": {"name": work.tokenizer},
        "dataset": {"type": "synthetic", "entries": requests + warmup, "randomSeed": seed,
                    "sampling": "sequential",
                    "prompts": {"isl": work.input_tokens, "osl": work.output_tokens}},
        "profiling": {"type": "concurrency", "concurrency": concurrency, "requests": requests},
        # Raw records carry every streamed chunk: the checks read them.
        "artifacts": {"dir": str(artifacts), "raw": True, "records": ["jsonl"], "summary": ["json"]},
        "gpuTelemetry": {"enabled": False},
        "serverMetrics": {"enabled": False},
        "runtime": {"ui": "none"},
    }
    if warmup:
        bench["warmup"] = {"type": "concurrency", "concurrency": concurrency, "requests": warmup}
    return {"schemaVersion": "2.0", "randomSeed": seed, "benchmark": bench}


def command(config_file: Path) -> list[str]:
    return [str(AIPERF), "profile", "--config", str(config_file)]


class Progress:
    """One bar over the whole run on a terminal; a line per finished level elsewhere."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.stream = total, 0, stream
        self.tty = stream.isatty()

    def show(self, label: str, current: int) -> None:
        if not self.tty:
            return
        n = min(self.done + current, self.total)
        filled = int(30 * n / max(self.total, 1))
        self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {n}/{self.total} requests  {label:<40}")
        self.stream.flush()

    def finish_level(self, label: str, count: int, failed: int) -> None:
        self.done += count
        if self.tty:
            self.show(label, 0)
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(f"{self.done}/{self.total} requests: {label} done, {failed} failed\n")
        self.stream.flush()


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def _exited(proc: subprocess.Popen) -> bool:
    """Whether it ended, without reaping it: while an ended leader is unreaped, no other process
    can take its pid, so signalling its process group cannot hit a stranger."""
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def stop(proc: subprocess.Popen, grace_s: float = 10) -> int:
    """End AIPerf and every process it started (its own process group), then reap it."""
    if not _exited(proc):
        _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while not _exited(proc) and time.monotonic() < deadline:
            time.sleep(0.1)
    # Workers that outlived their parent, or a parent that would not end.
    _signal_group(proc, signal.SIGKILL)
    return proc.wait()


def run(cfg: dict, run_dir: Path, api_key: str | None, progress: Progress, label: str) -> int:
    """Run AIPerf once; its console output goes to aiperf.log in run_dir. Returns its exit code.
    Whatever ends the wait (its own end, Ctrl-C, SIGTERM), nothing it started is left running."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "aiperf.yaml"
    config_file.write_text(json.dumps(cfg, indent=2))
    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"}
    env.pop(KEY_ENV, None)
    if api_key:
        env[KEY_ENV] = api_key
    with (run_dir / "aiperf.log").open("w") as log:
        # Its own process group: its workers can be found and ended with it.
        proc = subprocess.Popen(command(config_file), cwd=run_dir, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while not _exited(proc):
                progress.show(label, _count_lines(run_dir / "aiperf" / RECORDS))
                time.sleep(0.5)
        finally:
            rc = stop(proc)
    return rc
