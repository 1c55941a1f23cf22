"""The run's figures (from AIPerf's summary of each level) and verdict, as JSON and markdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

SUMMARY = "profile_export_aiperf.json"
# Report name -> AIPerf metric (milliseconds, one value per successful profiling request).
LATENCIES = {"ttft_ms": "time_to_first_token", "itl_ms": "inter_token_latency", "e2e_ms": "request_latency"}
PERCENTILES = ("p50", "p90", "p99")


def figures(artifacts: Path, cached: Optional[list[int]] = None) -> Optional[dict]:
    """Per-level figures from AIPerf's summary; None when it wrote none (every request failed).
    `cached`: the prompt tokens each measured request read from the server's cache, as it said."""
    path = artifacts / SUMMARY
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None

    def avg(metric: str) -> Optional[float]:
        return (summary.get(metric) or {}).get("avg")

    out: dict[str, Any] = {name: {p: (summary.get(metric) or {}).get(p) for p in PERCENTILES}
                           for name, metric in LATENCIES.items()}
    out.update({
        "output_tokens_per_s": avg("output_token_throughput"),
        "requests_per_s": avg("request_throughput"),
        "input_tokens_server": avg("usage_prompt_tokens"),
        "output_tokens_mean": avg("output_sequence_length"),
        "duration_s": avg("benchmark_duration"),
        # None: the server did not say.
        "cached_input_tokens": sum(cached) / len(cached) if cached else None,
    })
    return out


def verdict(levels: list[dict], label: str, ignore_eos: bool = True) -> tuple[bool, str]:
    total = sum(lvl["requests_checked"] for lvl in levels)
    failed = sum(lvl["failed"] for lvl in levels)
    reasons: dict[str, int] = {}
    for lvl in levels:
        for reason, n in lvl["failure_reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + n
    tool_errors = [lvl for lvl in levels if lvl["tool_exit_code"] != 0]
    if failed or tool_errors or not total:
        top = ", ".join(f"{n}x {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
        line = f"FAILED: {failed} of {total} requests failed"
        if top:
            line += f" ({top})"
        if tool_errors:
            line += f"; AIPerf exited non-zero on {len(tool_errors)} of {len(levels)} levels"
        return False, f"{line} - {label}. These figures are not a result."
    return True, (f"PASSED: all {total} requests checked (2xx, non-empty, final chunk, served model = requested, "
                  f"usage{', exact length' if ignore_eos else ''}) - {label}")


def _ms(d: dict, key: str, scale: float = 1.0, digits: int = 1) -> str:
    vals = [d.get(key, {}).get(p) for p in PERCENTILES]
    if any(v is None for v in vals):
        return "-"
    return " / ".join(f"{v / scale:.{digits}f}" for v in vals)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _num(v: Optional[float], digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        report["verdict"],
        "",
        f"Target: {report['target']}. Tool: AIPerf {report['tool']['version']}, streaming chat completions, "
        f"{s['input_tokens']} input words (the server's token count in `in tok`) and {s['output_tokens']} output tokens "
        f"per request{' (ignore_eos)' if s['ignore_eos'] else ''}, "
        f"{'keep-alive connections' if s['connections'] == 'pooled' else 'a new connection per request'}. Before each level, "
        f"{'one warm-up request per stream' if s['warmup'] is None else _count(s['warmup'], 'warm-up request')}: "
        "checked like the rest (`failed` counts them) but left out of the figures. Every level of every path "
        f"draws prompts of its own (run seed {s['seed']}), none sent before; `cached`: the prompt tokens the server "
        "says it still read from its prompt cache, mean per request (`-`: it does not say).",
        "",
        "| model (path) | conc. | requests + warm-up | failed | TTFT ms p50 / p90 / p99 "
        "| ITL (TPOT) ms p50 / p90 / p99 | E2E s p50 / p90 / p99 | out tok/s | req/s | in tok | cached |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for lvl in report["levels"]:
        f = lvl["figures"] or {}
        lines.append(
            f"| {lvl['series']} | {lvl['concurrency']} | {lvl['requests']} + {lvl['warmup']} | {lvl['failed']} "
            f"| {_ms(f, 'ttft_ms')} | {_ms(f, 'itl_ms', digits=2)} | {_ms(f, 'e2e_ms', 1000, 2)} "
            f"| {_num(f.get('output_tokens_per_s'))} | {_num(f.get('requests_per_s'), 2)} "
            f"| {_num(f.get('input_tokens_server'), 0)} | {_num(f.get('cached_input_tokens'), 0)} |")
    failures = [(lvl, f) for lvl in report["levels"] for f in lvl["failure_examples"]]
    if failures:
        lines += ["", "Failed requests (first of each level):", ""]
        for lvl, f in failures:
            lines.append(f"- {lvl['series']} c={lvl['concurrency']}: {f['phase']} request {f['request_id']}: "
                         f"{'; '.join(f['reasons'])}")
    return "\n".join(lines) + "\n"
