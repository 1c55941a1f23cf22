"""Verdict on every request AIPerf made, from its own per-request records.

A request passes only if the server answered 2xx, streamed a non-empty completion that ended
with a final chunk (a `finish_reason`, then `[DONE]`), no chunk carried an error, and every
chunk named the model that was asked for. AIPerf counts HTTP errors itself; the content and
model checks are ours, made on the raw request/response records it exports.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

RECORDS = "profile_export.jsonl"
RAW_RECORDS = "profile_export_raw.jsonl"


@dataclass
class Checked:
    total: int = 0
    # One entry per failed request: (request id or "-", phase, its reasons).
    failures: list[tuple[str, str, list[str]]] = field(default_factory=list)
    served_models: Counter = field(default_factory=Counter)

    def fail(self, request_id: str, phase: str, reasons: list[str]) -> None:
        self.failures.append((request_id, phase, reasons))

    def reasons(self) -> Counter:
        return Counter(reason for _, _, reasons in self.failures for reason in reasons)


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    # Split on newlines only: generated text may hold U+2028 and the like, which splitlines() splits on.
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]


def _error_reason(error: dict) -> str:
    code, kind = error.get("code"), error.get("type") or "error"
    if code:
        return f"HTTP {code} {kind}"
    # Client-side errors arrive as "Kind(args)": keep the kind once and the words.
    message = str(error.get("message", ""))
    if message.startswith(kind + "("):
        message = message[len(kind) + 1:].rstrip(")").replace("None, ", "").strip("'\"")
    return f"{kind}: {message[:120]}"


def stream_problems(raw: dict, requested: str, served: Counter) -> list[str]:
    """What is wrong with one raw streamed response (empty list: nothing)."""
    status = raw.get("status")
    if not isinstance(status, int) or not 200 <= status < 300:
        return [f"HTTP {status}"]
    text, finished, done, problems = [], False, False, []
    for response in raw.get("responses") or []:
        for packet in response.get("packets") or []:
            if packet.get("name") != "data":
                continue
            value = (packet.get("value") or "").strip()
            if value == "[DONE]":
                done = True
                continue
            try:
                chunk = json.loads(value)
            except json.JSONDecodeError:
                problems.append("a chunk that is not JSON")
                continue
            if chunk.get("error"):
                problems.append(f"error in stream: {str(chunk['error'])[:120]}")
            if "model" in chunk:
                served[chunk["model"]] += 1
                if chunk["model"] != requested:
                    problems.append(f"served model {chunk['model']!r} is not the requested {requested!r}")
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                text.append(delta.get("content") or "")
                text.append(delta.get("reasoning_content") or "")
                finished = finished or bool(choice.get("finish_reason"))
    if not "".join(text).strip():
        problems.append("empty completion")
    if not finished:
        problems.append("stream ended without a final chunk (no finish_reason)")
    elif not done:
        problems.append("stream ended without [DONE]")
    # One reason per kind, so a 100-chunk mismatch counts once per request.
    return list(dict.fromkeys(problems))


def check_run(run_dir: Path, expected: int) -> Checked:
    """Check the records of one AIPerf run that should hold `expected` requests (warmup included)."""
    out = Checked()
    records = _lines(run_dir / RECORDS)
    raws = {r["metadata"]["x_request_id"]: r for r in _lines(run_dir / RAW_RECORDS)}
    for record in records:
        meta = record.get("metadata", {})
        rid, phase = meta.get("x_request_id", "-"), meta.get("benchmark_phase", "?")
        out.total += 1
        if record.get("error"):
            out.fail(rid, phase, [_error_reason(record["error"])])
            continue
        raw = raws.get(rid)
        if raw is None:
            out.fail(rid, phase, ["no raw record to verify"])
            continue
        requested = (raw.get("payload") or {}).get("model", "")
        problems = stream_problems(raw, requested, out.served_models)
        if problems:
            out.fail(rid, phase, problems)
    if out.total < expected:
        missing = expected - out.total
        for _ in range(missing):
            out.fail("-", "?", ["request never recorded by the tool"])
        out.total = expected
    return out
