"""How long the program takes to evaluate under the mock engine as models are added.

    python bench/evaluate.py [--repeat 3]

Prints seconds per run (best of --repeat) for 1, 10 and 50 models on each stack.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import mock_engine as harness  # noqa: E402


def models(stack: str, n: int) -> list[dict]:
    """n copies of the stack's own first model, each under its own name (and file)."""
    template = harness.stack_config(stack)["llm-platform:models"][0]
    out = []
    for i in range(n):
        model = {**template, "name": f"model-{i}"}
        if "file" in model:
            model["file"] = f"model-{i}.gguf"
        out.append(model)
    return out


def measure(stack: str, n: int, repeat: int) -> tuple[float, int]:
    best, count = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        rec = harness.run(stack, {"llm-platform:models": models(stack, n)})
        best = min(best, time.perf_counter() - start)
        count = len(rec.registrations)
    return best, count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stacks", nargs="*", default=list(harness.STACKS))
    args = parser.parse_args()
    for stack in args.stacks:
        harness.run(stack)  # warm imports
    print(f"{'stack':8} {'models':>6} {'resources':>9} {'seconds':>8} {'ms/model':>9}")
    for stack in args.stacks:
        for n in (1, 10, 50):
            seconds, count = measure(stack, n, args.repeat)
            print(f"{stack:8} {n:>6} {count:>9} {seconds:>8.3f} {1000 * seconds / n:>9.1f}")


if __name__ == "__main__":
    main()
