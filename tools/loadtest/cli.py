"""`python -m tools.loadtest`: benchmark a stack's serving path with AIPerf and check every answer.

Prints the verdict as its first line (PASSED/FAILED), then the table; exits 0 only when every
request of every level passed the checks. Writes report.json, report.md and chart.png (and each
level's AIPerf config, log and records) under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

from tools.loadtest import aiperf, check, report
from tools.loadtest.target import (
    PortForward,
    Series,
    TargetError,
    base_url_for_aiperf,
    model_service,
    models_namespace,
    stack_outputs,
)

KEY_VAR = "LLM_API_KEY"
DIRECT_KEY_VAR = "LLM_DIRECT_API_KEY"
FAILURE_EXAMPLES = 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.loadtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-s", "--stack", help="read apiBaseUrl, apiKey and modelAliases from this stack's outputs")
    p.add_argument("--base-url", help="OpenAI-compatible base URL ending in /v1 (default: the stack's apiBaseUrl)")
    p.add_argument("--api-key", help=f"the key (prefer the {KEY_VAR} variable: an argument shows in `ps`)")
    p.add_argument("--model", action="append", help="model to benchmark, repeatable (default: every alias)")
    p.add_argument("--concurrency", default="1,4,16,64", help="comma-separated levels (default 1,4,16,64)")
    p.add_argument("--input-tokens", type=int, default=256, help="prompt length in words-as-tokens (default 256)")
    p.add_argument("--output-tokens", type=int, default=128, help="tokens generated per request (default 128)")
    p.add_argument("--requests", type=int, help="requests per level (default 4 per stream, at least 16)")
    p.add_argument("--warmup", type=int, help="uncounted warm-up requests per level (default: one per stream)")
    p.add_argument("--no-ignore-eos", action="store_true",
                   help="do not send ignore_eos (for servers that reject it); outputs may then end early")
    p.add_argument("--tokenizer", help="Hugging Face tokenizer (name or local folder) for the prompts "
                                       "(default: a word-level one built offline)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per request (default 600)")
    p.add_argument("--connections", choices=("pooled", "never"), default="pooled",
                   help="reuse connections like an SDK client (pooled, default) or open one per request (never)")
    p.add_argument("--direct", action="store_true",
                   help="also benchmark the first model's Service directly, through a kubectl port-forward")
    p.add_argument("--namespace", help="the models' namespace for --direct (default: from Pulumi.<stack>.yaml)")
    p.add_argument("--kubeconfig", help="kubeconfig for --direct (default: the stack's kubeconfig output)")
    p.add_argument("--label", help="what the run is, shown in the report (e.g. 'CPU, tiny model')")
    p.add_argument("--out", type=Path, help="report folder (default out/loadtest/<target>-<time>)")
    p.add_argument("--seed", type=int, help="seed of the run's synthetic prompts (default: a new one per run, "
                                         "so a server's prompt cache holds none of them)")
    args = p.parse_args(argv)
    try:
        args.levels = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    except ValueError:
        p.error(f"--concurrency: expected comma-separated integers, got {args.concurrency!r}")
    if not args.levels or args.levels[0] < 1:
        p.error("--concurrency: levels must be 1 or more")
    if not args.stack and not (args.base_url and args.model):
        p.error("give -s STACK, or --base-url and --model")
    return args


def resolve_series(args: argparse.Namespace) -> tuple[list[Series], dict]:
    outputs = stack_outputs(args.stack) if args.stack else {}
    base_url = args.base_url or outputs.get("apiBaseUrl")
    if not base_url:
        raise TargetError(f"stack {args.stack} has no apiBaseUrl output: is it up?")
    key = args.api_key or os.environ.get(KEY_VAR) or outputs.get("apiKey")
    models = args.model or outputs.get("modelAliases") or []
    if not models:
        raise TargetError(f"stack {args.stack} lists no modelAliases: pass --model")
    series = [Series(m, "api", base_url_for_aiperf(base_url), key) for m in models]
    return series, outputs


def level_plan(args: argparse.Namespace, concurrency: int) -> tuple[int, int]:
    requests = args.requests or max(16, 4 * concurrency)
    warmup = concurrency if args.warmup is None else args.warmup
    return max(requests, 1), max(warmup, 0)


def run_series(args, series: Series, work: aiperf.Workload, out: Path, progress: aiperf.Progress) -> list[dict]:
    levels = []
    for c in args.levels:
        requests, warmup = level_plan(args, c)
        run_dir = out / "runs" / f"{series.model.replace('/', '_')}-{series.path}" / f"c{c}"
        cfg = aiperf.config(series.base_url, series.model, c, requests, warmup, work, run_dir / "aiperf",
                            with_key=bool(series.api_key), seed=aiperf.level_seed(work.seed, series.label, c))
        label = f"{series.label} c={c}"
        rc = aiperf.run(cfg, run_dir, series.api_key, progress, label)
        try:
            checked = check.check_run(run_dir / "aiperf", requests + warmup)
        except (OSError, ValueError, KeyError) as err:
            # Records that cannot be read prove nothing: the whole level counts as failed.
            checked = check.Checked(total=requests + warmup)
            for _ in range(requests + warmup):
                checked.fail("-", "?", [f"the tool's records could not be read: {err}"[:200]])
        progress.finish_level(label, requests + warmup, len(checked.failures))
        levels.append({
            "series": series.label, "model": series.model, "path": series.path, "concurrency": c,
            "requests": requests, "warmup": warmup, "requests_checked": checked.total,
            "failed": len(checked.failures), "failure_reasons": dict(checked.reasons()),
            "failure_examples": [{"request_id": rid, "phase": phase, "reasons": reasons}
                                 for rid, phase, reasons in checked.failures[:FAILURE_EXAMPLES]],
            "served_models": dict(checked.served_models), "tool_exit_code": rc,
            "figures": report.figures(run_dir / "aiperf", checked.cached_prompt_tokens),
            "artifacts": str(run_dir.relative_to(out)),
        })
    return levels


def direct_series(args, first: Series, outputs: dict, stack: ExitStack) -> Series:
    forward = stack.enter_context(PortForward(
        model_service(args.stack or "", first.model), args.namespace or models_namespace(args.stack or ""),
        kubeconfig=args.kubeconfig, kubeconfig_text=None if args.kubeconfig else outputs.get("kubeconfig")))
    key = os.environ.get(DIRECT_KEY_VAR) or first.api_key
    return Series(first.model, "direct", forward.url, key)


def _terminated(signum, _frame) -> None:
    # Unwind as Ctrl-C does: AIPerf's process group, the port-forward and its kubeconfig file go.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminated)
    args = parse_args(argv)
    try:
        return benchmark(args)
    except Exception as err:  # noqa: BLE001 - whatever broke, the first line must say FAILED
        print(f"FAILED: the benchmark stopped: {type(err).__name__}: {err}"[:400])
        return 2


def benchmark(args: argparse.Namespace) -> int:
    name = args.stack or "custom"
    out = args.out or aiperf.ROOT / "out" / "loadtest" / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    try:
        aiperf.ensure_installed()
        series, outputs = resolve_series(args)
        tokenizer = args.tokenizer or str(aiperf.word_tokenizer())
    except (TargetError, aiperf.ToolMissing, subprocess.CalledProcessError) as err:
        print(f"FAILED: nothing measured: {err}")
        return 2
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    work = aiperf.Workload(args.input_tokens, args.output_tokens, not args.no_ignore_eos, args.timeout,
                           seed, tokenizer, args.connections)
    target = (f"stack {args.stack}" if args.stack else args.base_url) + (f" ({args.label})" if args.label else "")
    per_series = sum(sum(level_plan(args, c)) for c in args.levels)
    progress = aiperf.Progress(per_series * (len(series) + (1 if args.direct else 0)))
    out.mkdir(parents=True, exist_ok=True)
    levels: list[dict] = []
    with ExitStack() as stack:
        try:
            if args.direct:
                series.append(direct_series(args, series[0], outputs, stack))
        except TargetError as err:
            print(f"FAILED: nothing measured: {err}")
            return 2
        for s in series:
            levels += run_series(args, s, work, out, progress)
    ok, line = report.verdict(levels, f"{target}, {', '.join(s.label for s in series)}", work.ignore_eos)
    doc = {
        "ok": ok, "verdict": line, "target": target, "stack": args.stack,
        "tool": {"name": "aiperf", "version": aiperf.VERSION},
        "settings": {"concurrency": args.levels, "input_tokens": args.input_tokens,
                     "output_tokens": args.output_tokens, "ignore_eos": work.ignore_eos,
                     "connections": args.connections, "seed": seed,
                     "warmup": args.warmup,  # None: one per stream
                     "tokenizer": "word-level (offline)" if not args.tokenizer else args.tokenizer},
        "levels": levels,
    }
    (out / "report.json").write_text(json.dumps(doc, indent=2))
    table = report.markdown(doc)
    (out / "report.md").write_text(table)
    chart = out / "chart.png"
    drawn = subprocess.run([str(aiperf.PYTHON), "-m", "tools.loadtest.chart", str(out / "report.json"), str(chart)],
                           cwd=aiperf.ROOT, capture_output=True, text=True)
    print(table, end="")
    print(f"\nReport: {out / 'report.md'}, {out / 'report.json'}"
          + (f", {chart}" if drawn.returncode == 0 else f" (no chart: {drawn.stderr.strip()[-200:]})"))
    return 0 if ok else 1
