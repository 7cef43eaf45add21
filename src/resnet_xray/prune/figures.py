"""The pruning figures: accuracy against MACs and latency per round, and channel-importance distributions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..atomic import atomic_path


def _save(fig, path: Path) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_rounds(baseline: dict[str, Any], rounds: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Accuracy (or, without data, latency) against MACs, and against measured latency, one point per round."""
    rows = [baseline, *rounds]
    macs = [r["macs"] / 1e9 for r in rows]
    have_acc = all(r.get("accuracy") is not None for r in rows)
    y = [100 * r["accuracy"] for r in rows] if have_acc else [r["eager_ms"] for r in rows]
    ylabel = "validation accuracy (%)" if have_acc else "eager latency (ms)"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    ax.plot(macs, y, "o-", color="tab:blue")
    for r, xm, yv in zip(rows, macs, y):
        ax.annotate(str(r["round"]), (xm, yv), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("MACs (G, batch 1)")
    ax.set_ylabel(ylabel)
    ax.invert_xaxis()
    ax.set_title("against MACs (round numbers annotated)")
    ax.grid(alpha=0.3)
    ax = axes[1]
    for key, label, color in (("eager_ms", "PyTorch eager", "tab:orange"), ("ort_ms", "ONNX Runtime FP32", "tab:green")):
        if all(r.get(key) is not None for r in rows):
            ax.plot([r[key] for r in rows], y, "o-", label=label, color=color)
    ax.set_xlabel("measured batch-1 latency (ms)")
    ax.set_ylabel(ylabel)
    ax.invert_xaxis()
    ax.set_title("against latency")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_importance(groups: list[Any], path: Path, title: str = "") -> Path:
    """One strip of scores per DepGraph group, the channels the criterion would drop in red."""
    n = len(groups)
    fig, ax = plt.subplots(figsize=(max(8, 0.28 * n + 2), 4.8))
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
        ax.set_title(title)
    return _save(fig, path)
