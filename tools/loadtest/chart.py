"""Latency against throughput, one line per model and path, each point a concurrency level.
Run inside `.venv-loadtest`: `python -m tools.loadtest.chart report.json chart.png`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

PANELS = (("ttft_ms", "Time to first token", 1.0, "ms"),
          ("itl_ms", "Inter-token latency (TPOT)", 1.0, "ms"),
          ("e2e_ms", "End-to-end latency", 1000.0, "s"))


def draw(report: dict, dest: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict]] = {}
    for lvl in report["levels"]:
        if lvl["figures"] and lvl["figures"].get("output_tokens_per_s"):
            series.setdefault(lvl["series"], []).append(lvl)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(15, 4.8), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, levels) in enumerate(sorted(series.items())):
        levels.sort(key=lambda lvl: lvl["concurrency"])
        x = [lvl["figures"]["output_tokens_per_s"] for lvl in levels]
        color = colors[i % len(colors)]
        for ax, (key, title, scale, unit) in zip(axes, PANELS):
            p = {q: [lvl["figures"][key][q] / scale for lvl in levels] for q in ("p50", "p90", "p99")}
            ax.fill_between(x, p["p50"], p["p99"], color=color, alpha=0.12, linewidth=0)
            ax.plot(x, p["p90"], color=color, linestyle=":", linewidth=1)
            ax.plot(x, p["p50"], color=color, marker="o", linewidth=2, label=name)
            for xi, yi, lvl in zip(x, p["p50"], levels):
                ax.annotate(f"c={lvl['concurrency']}", (xi, yi), textcoords="offset points", xytext=(4, 6),
                            fontsize=8, color=color)
    for ax, (key, title, scale, unit) in zip(axes, PANELS):
        ax.set_title(title)
        ax.set_xlabel("output tokens/s (all streams)")
        ax.set_ylabel(f"{unit}  (line p50, dotted p90, band to p99)")
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)
        ax.grid(True, alpha=0.3)
    if series:
        axes[0].legend(loc="upper left", fontsize=9)
    s = report["settings"]
    status = "" if report["ok"] else "FAILED RUN - figures are not a result. "
    fig.suptitle(f"{status}{report['target']}: {s['input_tokens']} in / {s['output_tokens']} out tokens, "
                 f"concurrency {', '.join(map(str, s['concurrency']))} (AIPerf {report['tool']['version']})",
                 color="firebrick" if not report["ok"] else "black")
    fig.savefig(dest, dpi=110)


if __name__ == "__main__":
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
