"""Prometheus's own PromQL engine, at the release kube-prometheus-stack runs, for the queries the
program hands KEDA: `make setup` builds it from tools/promql (Go) as a test binary; without it
(no Go) the tests that need it skip, saying so.

Series are given in the notation of Prometheus's own tests: `{'up{job="x"}': "1x40"}` is 41
samples of 1, one a step (15 s) from time 0, where the engine's data begins (a Prometheus that
has just started on an empty disk); "_" is a step without a sample."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import pytest

from tools.mock_engine import PROJECT_DIR

ENGINE = Path(os.environ.get("PROMQL_ENGINE") or PROJECT_DIR / ".cache" / "promql" / "promql.test")


def samples(values: str, step_s: float) -> list[tuple[float, float]]:
    """Prometheus's test notation for one series: "a" one sample, "axN" N+1 samples of a,
    "a+bxN" (or "a-bxN") N+1 samples from a by b, "_" no sample for one step, "_xN" for N."""
    out, i = [], 0
    for token in values.split():
        match = re.fullmatch(r"(_|-?[\d.]+(?:e[+-]?\d+)?)(?:([+-][\d.]+)?x(\d+))?", token)
        assert match, f"bad series notation {token!r}"
        start, by, times = match.group(1), float(match.group(2) or 0), match.group(3)
        if start == "_":
            i += int(times or 1)
            continue
        for n in range(int(times) + 1 if times else 1):
            out.append((i * step_s, float(start) + n * by))
            i += 1
    return out


_SELECTOR = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?$')


def evaluate(series: Mapping[str, str], queries: Sequence[tuple[str, float]], step_s: float = 15) -> list[dict]:
    """Each query's instant vector at its time (seconds after time 0), as {labels: value}."""
    if not ENGINE.exists():
        pytest.skip(f"needs Prometheus's PromQL engine at {ENGINE} (`make setup` builds it with Go)")
    loaded = []
    for selector, values in series.items():
        name, body = _SELECTOR.match(selector).groups()
        loaded.append({"labels": {"__name__": name, **_labels(body)},
                       "samples": samples(values, step_s)})
    with tempfile.TemporaryDirectory() as tmp:
        case, out = Path(tmp) / "case.json", Path(tmp) / "out.json"
        case.write_text(json.dumps({"series": loaded, "queries": [{"expr": q, "at": at} for q, at in queries]}))
        run = subprocess.run([str(ENGINE), "-test.run", "^TestCase$"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PROMQL_CASE": str(case), "PROMQL_OUT": str(out)})
        assert run.returncode == 0 and out.exists(), run.stdout + run.stderr
        results = json.loads(out.read_text())
    for (query, _), result in zip(queries, results):
        assert not result.get("error"), f"{query}: {result['error']}"
    return [{tuple(sorted(s["labels"].items())): s["value"] for s in r["samples"]} for r in results]


def value(series: Mapping[str, str], query: str, at: float) -> float:
    """A query that answers one unlabelled sample (sum, count, clamp_max ...): its value."""
    (result,) = evaluate(series, [(query, at)])
    (only,) = result.values()
    return only


def _labels(body: str | None) -> dict[str, str]:
    """`a="x",b="y"` as Prometheus's text format and PromQL write them (\\, \" and \n escaped)."""
    unescape = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
    return {k: re.sub(r'\\[\\"n]', lambda m: unescape[m.group(0)], v) for k, v in _LABEL.findall(body or "")}


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def exposition(text: str, names: Sequence[str], target: Mapping[str, str]) -> dict[str, float]:
    """The samples of metrics `names` in a /metrics page, each with the labels Prometheus adds
    from its target (`target`: namespace, job, model ...), as `name{labels}` -> value."""
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match.group(1) not in names:
            continue
        labels = {**_labels(match.group(2)), **target}
        body = ",".join(f'{k}={json.dumps(v, ensure_ascii=False)}' for k, v in sorted(labels.items()))
        samples[f"{match.group(1)}{{{body}}}"] = float(match.group(3))
    return samples
