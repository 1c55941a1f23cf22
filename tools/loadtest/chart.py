"""Latency against throughput, one line per model and path, each point a concurrency level.
Run inside `.venv-loadtest`: `python -m tools.loadtest.chart report.json chart.png`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

PANELS = (("ttft_ms", "Time to first token", 1.0, "ms"),
          ("itl_ms", "Inter-token latency (TPOT)", 1.0, "ms"),
          ("e2e_ms", "End-to-end request latency", 1000.0, "s"))


def _ys(ax) -> list[float]:
    return [y for line in ax.get_lines() for y in line.get_ydata() if y > 0] or [1.0]


def draw(report: dict, dest: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    from matplotlib.lines import Line2D

    series: dict[str, list[dict]] = {}
    for lvl in report["levels"]:
        f = lvl["figures"]
        # A level with a figure missing (e.g. no inter-token latency from one-token answers) has no point.
        if f and f.get("output_tokens_per_s") and all(
                (f.get(key) or {}).get(q) is not None for key, *_ in PANELS for q in ("p50", "p90", "p99")):
            series.setdefault(lvl["series"], []).append(lvl)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(15, 5), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = []
    for i, (name, levels) in enumerate(sorted(series.items())):
        # Joined in order of concurrency: the curve shows what each step up in load buys and costs.
        levels.sort(key=lambda lvl: lvl["concurrency"])
        x = [lvl["figures"]["output_tokens_per_s"] for lvl in levels]
        color = colors[i % len(colors)]
        handles.append(Line2D([], [], color=color, marker="o", linewidth=2.5, label=name))
        for ax, (key, _, scale, _) in zip(axes, PANELS, strict=True):
            p = {q: [lvl["figures"][key][q] / scale for lvl in levels] for q in ("p50", "p90", "p99")}
            # A bar per level, not a band: throughput can fall as load rises, and a band would fold.
            ax.vlines(x, p["p50"], p["p90"], color=color, alpha=0.3, linewidth=7)
            ax.plot(x, p["p99"], color=color, linestyle="none", marker="x", markersize=6, alpha=0.7)
            ax.plot(x, p["p50"], color=color, marker="o", linewidth=2.5)
            for xi, yi, lvl in zip(x, p["p50"], levels, strict=True):
                ax.annotate(f"{lvl['concurrency']}", (xi, yi), textcoords="offset points", xytext=(7, -4),
                            ha="left", fontsize=9, fontweight="bold", color=color)
    for ax, (_, title, _, unit) in zip(axes, PANELS, strict=True):
        ax.set_title(f"{title} ({unit})", fontsize=12)
        ax.set_xlabel("output tokens/s, all streams together")
        ax.set_xlim(left=0)
        low, high = ax.get_ylim() if not ax.has_data() else (min(_ys(ax)), max(_ys(ax)))
        if low > 0 and high / low > 30:
            # Latencies spanning orders of magnitude: a log axis keeps the light levels readable.
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        else:
            ax.set_ylim(bottom=0)
        ax.margins(x=0.12, y=0.15)
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    handles += [Line2D([], [], color="grey", alpha=0.4, linewidth=7, label="p50 to p90"),
                Line2D([], [], color="grey", marker="x", linestyle="none", label="p99"),
                Line2D([], [], color="none", label="numbers: concurrent streams")]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=10, frameon=False)
    s = report["settings"]
    title = (f"{report['target']}: {s['input_tokens']} in / {s['output_tokens']} out tokens, "
             f"concurrency {', '.join(map(str, s['concurrency']))} - AIPerf {report['tool']['version']}")
    if not report["ok"]:
        title = "FAILED RUN, NOT A RESULT - " + title
    fig.suptitle(title, fontsize=13, color="black" if report["ok"] else "firebrick")
    fig.savefig(dest, dpi=110)


if __name__ == "__main__":
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
