"""Finding text that overlaps other text or falls off the figure, as drawn.

Every Text artist that is actually drawn (titles, suptitle, axis labels, tick labels,
annotations, legend entries, figure labels) is recorded during one render; each is
taken as the rectangle it covers on screen, rotated with it, and checked against the
figure's edges and against every other one.
"""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

TOLERANCE_PX = 1.0  # texts may touch; anti-aliasing makes a pixel of contact invisible


def drawn_texts(fig: Figure) -> tuple[list[Text], object]:
    """Render ``fig`` once and return the texts that were drawn, in drawing order, and the renderer."""
    seen: dict[int, Text] = {}
    original = Text.draw

    def spy(self: Text, renderer) -> None:
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            seen.setdefault(id(self), self)

    canvas = FigureCanvasAgg(fig)
    with mock.patch.object(Text, "draw", spy):
        canvas.draw()
    return list(seen.values()), canvas.get_renderer()


def corners(t: Text, renderer) -> np.ndarray:
    """The four corners of the rectangle ``t`` covers, in pixels (rotated text is not its bounding box)."""
    bb = Text.get_window_extent(t, renderer)  # an Annotation's own extent includes its arrow
    rotation = t.get_rotation()
    angle = rotation % 180
    if angle == 0:
        return np.array([[bb.x0, bb.y0], [bb.x1, bb.y0], [bb.x1, bb.y1], [bb.x0, bb.y1]])
    t.set_rotation(0)
    flat = Text.get_window_extent(t, renderer)
    t.set_rotation(rotation)
    w, h = flat.width, flat.height
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    centre = np.array([(bb.x0 + bb.x1) / 2, (bb.y0 + bb.y1) / 2])  # a rotated rectangle's box shares its centre
    half = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    return centre + half @ np.array([[c, s], [-s, c]])


def _shrink(p: np.ndarray, by: float) -> np.ndarray:
    centre = p.mean(axis=0)
    out = []
    for q in p:
        d = q - centre
        n = np.abs(d).max() or 1.0
        out.append(q - d / n * by if n > by else centre)
    return np.array(out)


def _separated(p: np.ndarray, q: np.ndarray) -> bool:
    """Separating-axis test for two convex quadrilaterals."""
    for poly in (p, q):
        for i in range(4):
            edge = poly[(i + 1) % 4] - poly[i]
            axis = np.array([-edge[1], edge[0]])
            a, b = p @ axis, q @ axis
            if a.max() <= b.min() or b.max() <= a.min():
                return True
    return False


def _name(t: Text) -> str:
    text = t.get_text().replace("\n", " | ")
    return repr(text[:60] + ("..." if len(text) > 60 else ""))


def _drawn_axes(fig: Figure, renderer) -> list[tuple[str, np.ndarray]]:
    """The plotting area of every axes that shows something (an empty, frameless grid cell does not)."""
    out = []
    for k, ax in enumerate(fig.axes):
        if ax.get_visible() and (ax.get_frame_on() or ax.images or ax.lines or ax.collections or ax.patches):
            bb = ax.get_window_extent(renderer)
            out.append((f"axes #{k} ({ax.get_title() or ax.get_label() or 'untitled'})",
                        np.array([[bb.x0, bb.y0], [bb.x1, bb.y0], [bb.x1, bb.y1], [bb.x0, bb.y1]])))
    return out


def text_problems(fig: Figure) -> list[str]:
    """Every pair of drawn texts that overlap, every text not wholly inside the figure, and every
    figure-level text (suptitle, figure labels) that lies over an axes' plotting area."""
    texts, renderer = drawn_texts(fig)
    boxes = [corners(t, renderer) for t in texts]
    W, H = fig.bbox.width, fig.bbox.height
    problems = []
    for t, p in zip(texts, boxes):
        lo, hi = p.min(axis=0), p.max(axis=0)
        if lo[0] < -TOLERANCE_PX or lo[1] < -TOLERANCE_PX or hi[0] > W + TOLERANCE_PX or hi[1] > H + TOLERANCE_PX:
            problems.append(f"{_name(t)} is cut off: covers x {lo[0]:.0f}..{hi[0]:.0f}, y {lo[1]:.0f}..{hi[1]:.0f} "
                            f"of a {W:.0f} x {H:.0f} figure")
    shrunk = [_shrink(p, TOLERANCE_PX) for p in boxes]
    areas = _drawn_axes(fig, renderer)
    for t, p in zip(texts, shrunk):
        if t.axes is None:
            problems += [f"{_name(t)} lies over {name}" for name, a in areas if not _separated(p, a)]
    lo = np.array([p.min(axis=0) for p in shrunk])
    hi = np.array([p.max(axis=0) for p in shrunk])
    for i in range(len(texts)):
        # boxes first: only pairs whose axis-aligned boxes meet need the exact test
        near = np.flatnonzero((lo[i + 1:, 0] < hi[i, 0]) & (hi[i + 1:, 0] > lo[i, 0]) &
                              (lo[i + 1:, 1] < hi[i, 1]) & (hi[i + 1:, 1] > lo[i, 1])) + i + 1
        for j in near:
            if not _separated(shrunk[i], shrunk[j]):
                problems.append(f"{_name(texts[i])} overlaps {_name(texts[j])}")
    return problems
