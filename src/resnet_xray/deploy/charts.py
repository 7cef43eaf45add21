"""The latency charts of ``bench`` and the accuracy-against-latency chart of ``optimize``.

Kept apart from the code that measures, so timing a model never loads matplotlib.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import check_writable, write_bytes
from ..errors import XrayError
from ..viz.canvas import figure_png, new_figure
from ..viz.labels import column_height_in, label_points
from .bench import BenchResult
from .timing import TimingStats


@dataclass
class ChartBar:
    """One bar of the latency chart."""

    label: str  # the path or model file, as the table names it
    stats: TimingStats
    speedup: float | None  # against the chart's reference, written beside the bar
    kind: str  # eager | int8 | fp: the bar's colour
    peer: bool = False  # OpenVINO: hatched


BAR_COLOURS = {"eager": "tab:gray", "int8": "tab:orange", "fp": "tab:blue"}
BAR_KINDS = {"eager": "eager PyTorch (the baseline)", "int8": "INT8", "fp": "FP32 / FP16 engine"}


def latency_figure(bars: list[ChartBar], title: str, speedup_of: str) -> Any:
    """Horizontal bars of median latency with interquartile whiskers; each bar's figures on the right, a legend below."""
    from matplotlib.patches import Patch

    fig = new_figure(8.5, 0.4 * len(bars) + 2.2)
    ax = fig.add_subplot()
    y = np.arange(len(bars))[::-1]
    med = [b.stats.median_ms for b in bars]
    err = np.array([[b.stats.median_ms - b.stats.p25 * 1e3 for b in bars], [b.stats.p75 * 1e3 - b.stats.median_ms for b in bars]])
    drawn = ax.barh(y, med, xerr=err.clip(0), color=[BAR_COLOURS[b.kind] for b in bars], capsize=3)
    for bar, b in zip(drawn, bars):
        bar.set_hatch("//" if b.peer else "")
    ax.set_yticks(y, [b.label for b in bars], fontsize=8)
    # the figures stand in their own column right of the axes, where no whisker can reach them
    right = ax.secondary_yaxis("right")
    right.set_yticks(y, [f"{b.stats.median_ms:.2f} ms" + (f" ({b.speedup:.2f}x)" if b.speedup else "") for b in bars], fontsize=8)
    right.tick_params(length=0)
    ax.set_ylim(-0.6, len(bars) - 0.4)
    ax.set_xlim(0, max(b.stats.p75 * 1e3 for b in bars) * 1.05)
    ax.set_xlabel(f"latency, ms (median; whiskers: interquartile range); speed-up against {speedup_of}")
    ax.set_title(title, fontsize=9)
    handles = [Patch(color=BAR_COLOURS[k], label=BAR_KINDS[k]) for k in BAR_KINDS if any(b.kind == k for b in bars)]
    if any(b.peer for b in bars):
        handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="//", label="OpenVINO"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    return fig


def bar_kind(name: str) -> str:
    return "eager" if name.startswith("eager") else "int8" if "int8" in name else "fp"


def bench_figure(result: BenchResult) -> Any:
    """The chart of one ``bench`` run: every path that ran, at every batch size."""
    ok = [r for r in result.rows if r.status == "ok"]
    if not ok:
        raise XrayError("no path ran, nothing to chart")
    bars = [ChartBar(f"{r.path} (b{r.batch})", r.stats, r.speedup, bar_kind(r.path), r.path.startswith("openvino")) for r in ok]
    m = result.machine
    title = f"{result.model}\n{m.get('cpu', '')[:60]}, {m.get('threads')} thread(s)".strip()
    return latency_figure(bars, title, "eager FP32 at the same batch")


def save_chart(result: BenchResult, path: str | os.PathLike) -> Path:
    """Write :func:`bench_figure` to ``path`` (PNG, atomically)."""
    out = check_writable(path)
    return _write_png(bench_figure(result), out)


def save_models_chart(stats: dict[str, TimingStats], kinds: dict[str, tuple[str, str]], machine: dict[str, Any],
                      path: str | os.PathLike) -> Path:
    """The chart of ``bench --model A --model B ...``: one bar per deployed file, speed-ups against the first.

    Args:
        stats: timings per model file, in the order given.
        kinds: (engine, precision) per model file.
    """
    out = check_writable(path)
    first = next(iter(stats.values())).median
    bars = [ChartBar(f"{p} ({kinds[p][0]} {kinds[p][1]})", st, first / st.median,
                     "int8" if "int8" in kinds[p][1] else "fp", kinds[p][0] == "openvino") for p, st in stats.items()]
    title = (f"{len(stats)} deployed model(s), batch 1, timed round-robin\n"
             f"{machine.get('cpu', '')[:60]}, {machine.get('threads')} thread(s)")
    return _write_png(latency_figure(bars, title, f"the first, {next(iter(stats))}"), out)


def _write_png(fig: Any, out: Path) -> Path:
    write_bytes(out, figure_png(fig, dpi=120), fsync=True)
    return out


def pareto_front(cands: list[Any]) -> list[Any]:
    """:class:`~resnet_xray.deploy.optimize.Candidate` s no other is both faster and more accurate than."""
    pts = [c for c in cands if c.latency_ms and c.accuracy is not None]
    return sorted([c for c in pts if not any(o is not c and o.latency_ms <= c.latency_ms and o.accuracy >= c.accuracy
                                             and (o.latency_ms < c.latency_ms or o.accuracy > c.accuracy) for o in pts)],
                  key=lambda c: c.latency_ms)


ENGINE_COLOURS = {"eager": "tab:gray", "onnxruntime": "tab:blue", "openvino": "tab:green", "torch": "tab:orange"}


def optimize_figure(cands: list[Any], base_acc: float, max_drop: float) -> Any:
    """Accuracy against latency for every scored ``optimize`` candidate, each named beside the chart; None when none was timed."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import LogFormatter

    pts = [c for c in cands if c.latency_ms and c.accuracy is not None]
    if not pts:
        return None
    fig = new_figure(9.0, max(5.0, column_height_in(len(pts)) + 2.2))
    ax = fig.add_subplot()
    for c in pts:
        ax.scatter(c.latency_ms, c.accuracy * 100, color=ENGINE_COLOURS.get(c.engine, "k"), marker="s" if c.pruned else "o",
                   edgecolor="red" if c.status == "winner" else "none", linewidths=1.5, s=60, zorder=3)
    handles = [Line2D([], [], ls="", marker="o", color=ENGINE_COLOURS.get(e, "k"), label=e)
               for e in dict.fromkeys(c.engine for c in pts)]
    if any(c.pruned for c in pts):
        handles.append(Line2D([], [], ls="", marker="s", color="0.4", label="pruned"))
    if any(c.status == "winner" for c in pts):
        handles.append(Line2D([], [], ls="", marker="o", color="white", markeredgecolor="red", markeredgewidth=1.5, label="winner"))
    front = pareto_front(pts)
    if len(front) > 1:  # one point is no line: the legend names only what is drawn
        ax.step([c.latency_ms for c in front], [c.accuracy * 100 for c in front], "k--", where="post", lw=1, zorder=2)
        handles.append(Line2D([], [], color="k", ls="--", lw=1, label="Pareto front"))
    ax.axhline((base_acc * 100) - max_drop, color="red", lw=0.8, ls=":")
    handles.append(Line2D([], [], color="red", lw=0.8, ls=":", label=f"budget: FP32 - {max_drop} points"))
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))  # 3, 10, 30 rather than 3x10^0
    ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set_xlabel("batch-1 latency, ms (median, log scale)")
    ax.set_ylabel("val top-1 accuracy, %")
    ax.set_title("optimize: accuracy against latency, every candidate", fontsize=9)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8, frameon=False)
    label_points(ax, [c.latency_ms for c in pts], [c.accuracy * 100 for c in pts], [c.name for c in pts],
                 colours=["#b00000" if c.status == "winner" else "black" for c in pts],
                 weights=["bold" if c.status == "winner" else "normal" for c in pts])
    return fig


def save_optimize_chart(cands: list[Any], path: Path, base_acc: float, max_drop: float) -> Path | None:
    """Write :func:`optimize_figure` to ``path`` (PNG, atomically); None when no candidate was timed."""
    fig = optimize_figure(cands, base_acc, max_drop)
    return None if fig is None else write_bytes(path, figure_png(fig))
