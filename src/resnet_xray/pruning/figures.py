"""The pruning figures: accuracy against MACs and latency per round, and channel-importance distributions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..atomic import atomic_path
from ..viz.canvas import DPI, new_figure
from ..viz.labels import column_height_in, label_points


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI)
    return path


def plot_rounds(baseline: dict[str, Any], rounds: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Write :func:`rounds_figure` to ``path`` (PNG, atomically)."""
    return _save(rounds_figure(baseline, rounds, title), path)


def rounds_figure(baseline: dict[str, Any], rounds: list[dict[str, Any]], title: str = "") -> Figure:
    """Accuracy (or, without data, latency) against MACs, and against measured latency, one point per round.

    The rounds are named in a column beside the left chart, so close points never print over each other.
    """
    rows = [baseline, *rounds]
    macs = [r["macs"] / 1e9 for r in rows]
    have_acc = all(r.get("accuracy") is not None for r in rows)
    y = [100 * r["accuracy"] for r in rows] if have_acc else [r["eager_ms"] for r in rows]
    ylabel = "validation accuracy (%)" if have_acc else "eager latency (ms)"
    fig = new_figure(12, max(4.4, column_height_in(len(rows)) + 1.6))
    axes = fig.subplots(1, 2)
    ax = axes[0]
    ax.plot(macs, y, "o-", color="tab:blue")
    ax.set_xlabel("MACs (G, batch 1)")
    ax.set_ylabel(ylabel)
    ax.invert_xaxis()
    ax.set_title("against MACs", fontsize=10)
    ax.grid(alpha=0.3)
    ax = axes[1]
    for key, label, color in (("eager_ms", "PyTorch eager", "tab:orange"), ("ort_ms", "ONNX Runtime FP32", "tab:green")):
        if all(r.get(key) is not None for r in rows):
            ax.plot([r[key] for r in rows], y, "o-", label=label, color=color)
    ax.set_xlabel("measured batch-1 latency (ms)")
    ax.set_ylabel(ylabel)
    ax.invert_xaxis()
    ax.set_title("against latency", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    label_points(axes[0], macs, y, [f"round {r['round']}" + (" (before pruning)" if k == 0 else "") for k, r in enumerate(rows)])
    return fig


def plot_importance(groups: list[Any], path: Path, title: str = "") -> Path:
    """Write :func:`importance_figure` to ``path`` (PNG, atomically)."""
    return _save(importance_figure(groups, title), path)


def importance_figure(groups: list[Any], title: str = "") -> Figure:
    """One strip of scores per DepGraph group, the channels the criterion would drop in red."""
    n = len(groups)
    fig = new_figure(max(8, 0.28 * n + 2), 6.0)
    ax = fig.add_subplot()
    for i, g in enumerate(groups):
        scores = g.scores
        drop = set(g.dropped)
        keep_y = [s for c, s in enumerate(scores) if c not in drop]
        drop_y = [s for c, s in enumerate(scores) if c in drop]
        ax.scatter([i] * len(keep_y), keep_y, s=4, color="tab:blue", alpha=0.5, linewidths=0)
        ax.scatter([i] * len(drop_y), drop_y, s=5, color="tab:red", alpha=0.8, linewidths=0)
    ax.set_xticks(range(n))
    # A residual group ties many layers together: say so in its label.
    ax.set_xticklabels([g.name + (f" (+{len(g.members) - 3} coupled)" if len(g.members) > 3 else "") for g in groups], rotation=90, fontsize=6)
    if all(s > 0 for g in groups for s in g.scores):
        ax.set_yscale("log")
    ax.set_ylabel("channel importance (group-normalised)")
    ax.scatter([], [], color="tab:blue", s=10, label="kept")
    ax.scatter([], [], color="tab:red", s=10, label="would be dropped")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    if title:
        ax.set_title(title, fontsize=10)
    return fig
