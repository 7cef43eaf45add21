"""The residual-contribution chart: how much each block's F(x) changes its input."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..tracing import BlockStats
from .canvas import new_figure, save_figure, stamp


def plot_residual_contributions(blocks: Sequence[BlockStats], path: str | os.PathLike, weights: Any = None) -> Path:
    """Write :func:`residual_figure` to ``path`` (PNG, atomically); returns the path written."""
    return save_figure(residual_figure(blocks, weights), path)


def residual_figure(blocks: Sequence[BlockStats], weights: Any = None) -> Figure:
    """A chart over all residual blocks (16 in ResNet-50).

    Top: ||F(x)|| and ||shortcut|| per block on a log scale, projection blocks marked.
    Bottom: their ratio, and the cosine between F(x) and the shortcut and the fraction
    of active output units on a second axis. ``weights`` is named under it (see :func:`stamp`).
    """
    if not blocks:
        raise ValueError("no residual blocks to plot")
    names = [b.name for b in blocks]
    xs = range(len(blocks))
    fig = new_figure(max(7.0, 0.5 * len(blocks) + 2), 6)
    top, bottom = fig.subplots(2, 1, sharex=True)
    w = 0.4
    top.bar([x - w / 2 for x in xs], [b.residual_norm for b in blocks], w, label="||F(x)|| (residual branch)", color="tab:orange")
    top.bar([x + w / 2 for x in xs], [b.shortcut_norm for b in blocks], w, label="||shortcut|| (x or projection of x)", color="tab:blue")
    for x, b in zip(xs, blocks):
        if b.projection:
            top.annotate("proj", (x, max(b.residual_norm, b.shortcut_norm)), ha="center", va="bottom", fontsize=7)
    top.set_yscale("log")
    top.set_ylabel("L2 norm")
    top.set_title("Residual contributions per block, on this input")
    top.legend(fontsize=8)

    bottom.bar(list(xs), [b.ratio for b in blocks], 0.6, color=["tab:purple" if b.projection else "tab:gray" for b in blocks],
               label="||F(x)|| / ||shortcut||")
    bottom.axhline(1.0, color="black", linewidth=0.6)
    finite = [b.ratio for b in blocks if math.isfinite(b.ratio)] or [1.0]
    bottom.set_ylim(0, max(max(finite), 1.0) * 1.4)  # room for the legend
    bottom.set_ylabel("ratio")
    second = bottom.twinx()
    second.plot(list(xs), [b.cosine for b in blocks], "o-", color="tab:green", label="cosine(F(x), shortcut)")
    second.plot(list(xs), [b.active_frac for b in blocks], "s--", color="tab:red", label="active output fraction")
    second.set_ylim(-1.05, 1.4)
    second.set_ylabel("cosine / fraction")
    handles = bottom.get_legend_handles_labels()[0] + second.get_legend_handles_labels()[0]
    labels = bottom.get_legend_handles_labels()[1] + second.get_legend_handles_labels()[1]
    bottom.legend(handles, labels, fontsize=7, loc="upper left", ncols=3)
    bottom.set_xticks(list(xs), names, rotation=45, fontsize=7)
    return stamp(fig, weights)
