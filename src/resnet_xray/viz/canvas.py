"""Writing figures (PNG files replaced atomically, or bytes for the report) and saying which weights made each."""

from __future__ import annotations

import io
import os
import textwrap
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine

from ..atomic import writable_dir, write_bytes
from ..errors import XrayError
from ..provenance import WeightsInfo

DPI = 110


def new_figure(width_in: float, height_in: float, layout: str | None = "constrained") -> Figure:
    """A figure that belongs to no pyplot state, so nothing leaks between calls or threads.

    ``layout=None`` for dense grids of images: constrained layout measures every axes' text on
    each draw, which cost most of the report's stage sheet.
    """
    return Figure(figsize=(width_in, height_in), dpi=DPI, layout=layout)


def figure_png(fig: Figure, dpi: int = DPI) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def write_bytes_atomic(data: bytes, path: str | os.PathLike, flag: str = "-o") -> Path:
    """Write ``data`` to a temp file beside ``path`` and rename it into place."""
    path = Path(path)
    writable_dir(path.parent if str(path.parent) else Path("."), flag)
    write_bytes(path, data, flag)
    return path


def save_figure(fig: Figure, path: str | os.PathLike, flag: str = "-o", dpi: int = DPI) -> Path:
    """Render ``fig`` as PNG to ``path`` atomically; an unwritable path is the user's error."""
    if Path(path).suffix.lower() not in (".png", ""):
        raise XrayError(f"{flag} {path}: figures are written as PNG; use a .png name")
    return write_bytes_atomic(figure_png(fig, dpi), path, flag)


WARNING_COLOUR = "#b00000"
LABEL_COLOUR = "#666666"
LABEL_PT = 6  # the provenance line under every picture
PAD_IN = 0.05


def weights_warning(weights: Any) -> str | None:
    """The line saying a picture's weights were never trained, or are unknown; None for trained weights.

    The CLI prints the same line that :func:`stamp` puts in the picture's title.
    """
    info = _weights_info(weights)
    if info is None or info.trained is True:
        return None
    source = info.source or ""
    if info.trained is False:
        return f"WARNING: {source} weights, never trained: nothing in this picture was learned"
    return f"WARNING: unknown weights{f' ({source})' if source else ''}: this picture may show nothing learned"


def _weights_info(weights: Any) -> Any:
    """A :class:`~resnet_xray.provenance.WeightsInfo` from one, from a ModelMeta, or None for a bare label."""
    if weights is None or isinstance(weights, str):
        return None
    return WeightsInfo.of(weights)


def stamp(fig: Figure, weights: Any, *, warn: bool = True) -> Figure:
    """Say which weights made the figure: a line under it, and a warning atop its title when they were never trained.

    Args:
        fig: a finished figure; it grows by the lines added, so its pictures keep their size.
        weights: a ``WeightsInfo``, a ``ModelMeta``, or a plain label (no warning then).
        warn: False for pictures the weights' values do not change (preprocessing, layer shapes).
    """
    info = _weights_info(weights)
    label = (info.source if info is not None else weights) or None
    warning = weights_warning(info) if warn else None
    if warning is None and label is None:
        return fig
    width, height = fig.get_size_inches()
    title = fig.get_suptitle()
    size = float(fig._suptitle.get_fontsize()) if title else 9.0
    if warning:
        warning = "\n".join(textwrap.wrap(warning, max(30, int(width * 72 / (size * 0.62)))))
    top = (warning.count("\n") + 1) * size * 1.3 / 72 + (0 if title else PAD_IN) if warning else 0.0
    bottom = LABEL_PT * 1.4 / 72 + PAD_IN if label else 0.0
    constrained = isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    from_top = (1 - fig._suptitle.get_position()[1]) * height if title else PAD_IN  # a title keeps its place
    fig.set_size_inches(width, height + top + bottom)
    if not constrained:
        _make_room(fig, height, top, bottom)
    if warning:
        text = f"{warning}\n{title}" if title else warning
        kw = {} if constrained else {"va": "top", "y": 1 - from_top / (height + top + bottom)}
        fig.suptitle(text, color=WARNING_COLOUR, fontsize=size, **kw)
    if label:
        kw = {} if constrained else {"y": PAD_IN / 2 / (height + top + bottom), "va": "bottom"}
        fig.supxlabel(f"weights: {label}", x=0.995, ha="right", fontsize=LABEL_PT, color=LABEL_COLOUR, **kw)
    return fig


def _make_room(fig: Figure, height: float, top: float, bottom: float) -> None:
    """Keep every axes and figure text where it was in inches after the figure grew by ``top`` and ``bottom``."""
    total = height + top + bottom
    for ax in fig.axes:
        p = ax.get_position(original=True)
        ax.set_position([p.x0, (p.y0 * height + bottom) / total, p.width, p.height * height / total])
    for t in fig.texts:
        x, y = t.get_position()
        t.set_position((x, (y * height + bottom) / total))
