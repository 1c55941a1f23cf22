"""Verdict on every request AIPerf made, from its own per-request records.

A request passes only if the server answered 2xx, streamed a non-empty completion that ended
with a final chunk (a `finish_reason`, then `[DONE]`), no chunk carried an error, the chunks
named a model and every one named the model that was asked for, and the stream reported its
`usage`. With `ignore_eos` the answer must also have the requested length: `finish_reason`
"length" and `usage.completion_tokens` equal to the requested maximum, consistent with the text
that came. AIPerf counts HTTP errors itself; the other checks are ours, made on the raw
request/response records it exports.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

RECORDS = "profile_export.jsonl"
RAW_RECORDS = "profile_export_raw.jsonl"


@dataclass
class Checked:
    total: int = 0
    # One entry per failed request: (request id or "-", phase, its reasons).
    failures: list[tuple[str, str, list[str]]] = field(default_factory=list)
    served_models: Counter = field(default_factory=Counter)
    # Prompt tokens the server says it read from its cache, per measured request that says so.
    cached_prompt_tokens: list[int] = field(default_factory=list)

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
    # Client-side errors arrive as "Kind(args)": shown as they came, the kind named once.
    message = str(error.get("message", ""))
    return (message if message.startswith(kind) else f"{kind}: {message}")[:160]


def cached_tokens(usage: dict, chunk: dict) -> Optional[int]:
    """Prompt tokens served from the server's cache: OpenAI's field (vLLM, llama.cpp), else
    llama.cpp's own `timings.cache_n`; None when the server does not say."""
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached is None:
        cached = (chunk.get("timings") or {}).get("cache_n")
    return cached if isinstance(cached, int) else None


def stream_problems(raw: dict, requested: str, served: Counter, cached: Optional[list] = None) -> list[str]:
    """What is wrong with one raw streamed response (empty list: nothing). Appends the cached
    prompt tokens the server reported to `cached`."""
    status = raw.get("status")
    if not isinstance(status, int) or not 200 <= status < 300:
        return [f"HTTP {status}"]
    payload = raw.get("payload") or {}
    text, finish_reasons, done, problems = [], [], False, []
    usage, usage_chunk, content_chunks, named = None, {}, 0, False
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
            if chunk.get("model"):
                named = True
                served[chunk["model"]] += 1
                if chunk["model"] != requested:
                    problems.append(f"served model {chunk['model']!r} is not the requested {requested!r}")
            if isinstance(chunk.get("usage"), dict):
                usage, usage_chunk = chunk["usage"], chunk
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                # A reasoning model's thinking: `reasoning` in vLLM now, `reasoning_content` before and in
                # llama.cpp (the same text where a server sends both).
                piece = (delta.get("content") or "") + (delta.get("reasoning_content") or delta.get("reasoning") or "")
                text.append(piece)
                content_chunks += bool(piece)
                if choice.get("finish_reason"):
                    finish_reasons.append(choice["finish_reason"])
    body = "".join(text)
    if not body.strip():
        problems.append("empty completion")
    if not named:
        # A server that names no model could be serving any: the comparison cannot be made.
        problems.append("served model unknown (no chunk names a model)")
    if not finish_reasons:
        problems.append("stream ended without a final chunk (no finish_reason)")
    elif not done:
        problems.append("stream ended without [DONE]")
    if usage is None:
        # Throughput and lengths are the server's counts: without them the figures are guesses.
        problems.append("no usage in the stream (token counts unknown)")
    else:
        if cached is not None and (n := cached_tokens(usage, usage_chunk)) is not None:
            cached.append(n)
        if payload.get("ignore_eos") and finish_reasons:
            problems += length_problems(payload, finish_reasons[-1], usage.get("completion_tokens"),
                                        content_chunks, len(body.encode()))
    # One reason per kind, so a 100-chunk mismatch counts once per request.
    return list(dict.fromkeys(problems))


def length_problems(payload: dict, finish_reason: str, completion_tokens, chunks: int, text_bytes: int) -> list[str]:
    """With ignore_eos the server must generate exactly the requested tokens. Its count must fit
    the text that came: each content chunk carries at least one token, and each token decodes to
    at least one byte (byte-level and byte-fallback vocabularies; only control tokens decode to
    nothing, and ignore_eos keeps end-of-sequence out)."""
    wanted = payload.get("max_completion_tokens") or payload.get("max_tokens")
    problems = []
    if finish_reason != "length":
        problems.append(f"finish_reason {finish_reason!r} with ignore_eos (expected 'length')")
    if not isinstance(completion_tokens, int):
        return problems + ["usage has no completion_tokens"]
    if wanted and completion_tokens != wanted:
        problems.append(f"usage.completion_tokens {completion_tokens} is not the requested {wanted}")
    if not chunks <= completion_tokens <= text_bytes:
        problems.append(f"usage.completion_tokens {completion_tokens} does not fit the text streamed "
                        f"({chunks} content chunks, {text_bytes} bytes)")
    return problems


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
        measured = out.cached_prompt_tokens if phase == "profiling" else None
        problems = stream_problems(raw, requested, out.served_models, measured)
        if problems:
            out.fail(rid, phase, problems)
    if out.total < expected:
        missing = expected - out.total
        for _ in range(missing):
            out.fail("-", "?", ["request never recorded by the tool"])
        out.total = expected
    return out
