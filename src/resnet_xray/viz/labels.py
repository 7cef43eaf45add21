"""Names for the points of a scatter chart that never print over each other.

Labels placed beside their points collide as soon as two points are close, and no
offset fixes every case. Here the names stand in a column to the right of the axes,
in the order of their points' heights, at least one line apart, each joined to its
point by a thin line.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes

LINE = 1.35  # a label's slot, in lines of its font


def spread(targets: Sequence[float], gap: float, low: float = 0.0, high: float = 1.0,
           tiebreak: Sequence[float] | None = None) -> list[float]:
    """Positions as close as possible to ``targets``, in the same order, at least ``gap`` apart, within [low, high].

    Equal targets are ordered by ``tiebreak``, smallest lowest. When the column is too short for all
    of them they overflow ``high``; callers size the axes for their count.
    """
    t = np.asarray(targets, dtype=float)
    order = np.lexsort((np.zeros_like(t) if tiebreak is None else np.asarray(tiebreak, dtype=float), t))
    pos = t[order].clip(low + gap / 2, high - gap / 2)
    for i in range(1, len(pos)):  # push up past the one below
        pos[i] = max(pos[i], pos[i - 1] + gap)
    if len(pos) and pos[-1] > high - gap / 2:  # then down from the top, as far as the bottom allows
        pos[-1] = max(high - gap / 2, low + gap / 2 + gap * (len(pos) - 1))
        for i in range(len(pos) - 2, -1, -1):
            pos[i] = min(pos[i], pos[i + 1] - gap)
    out = np.empty_like(pos)
    out[order] = pos
    return out.tolist()


def label_points(ax: Axes, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], *, fontsize: float = 7,
                 colours: Sequence[str] | None = None, weights: Sequence[str] | None = None) -> list:
    """Write ``labels`` in a column right of ``ax``, each joined to its point (``xs``, ``ys`` in data units).

    Call it after everything is plotted and the limits are final. Returns the annotations.
    """
    if not len(labels):
        return []
    fig = ax.figure
    fig.draw_without_rendering()  # the axes' final size and limits, so a line of text is known in axes units
    height_pt = ax.get_window_extent().height * 72 / fig.dpi
    gap = LINE * fontsize / max(height_pt, 1.0)
    to_axes = ax.transAxes.inverted()
    where = np.array([to_axes.transform(ax.transData.transform((x, y))) for x, y in zip(xs, ys)])
    slots = spread(where[:, 1], gap, tiebreak=-where[:, 0])  # of points level with each other, the leftmost's line runs outermost
    out = []
    for k, (x, y, text, slot) in enumerate(zip(xs, ys, labels, slots)):
        out.append(ax.annotate(
            text, (x, y), xycoords="data", xytext=(1.03, slot), textcoords="axes fraction", va="center", ha="left",
            fontsize=fontsize, color=colours[k] if colours else "black", fontweight=weights[k] if weights else "normal",
            annotation_clip=False,
            arrowprops={"arrowstyle": "-", "color": "0.65", "lw": 0.6, "shrinkA": 2, "shrinkB": 4, "relpos": (0, 0.5)}))
    return out


def column_height_in(count: int, fontsize: float = 7) -> float:
    """Inches of axes height a column of ``count`` labels needs."""
    return count * LINE * fontsize / 72
