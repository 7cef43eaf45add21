"""Writing figures: PNG files replaced atomically, or PNG bytes for embedding in the report."""

from __future__ import annotations

import io
import os
from pathlib import Path

from matplotlib.figure import Figure

from ..atomic import writable_dir, write_bytes
from ..errors import XrayError

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


def stamp(fig: Figure, weights: str | None) -> Figure:
    """A corner label saying which weights made the figure (every picture carries its provenance)."""
    if weights:
        fig.text(0.998, 0.002, f"weights: {weights}", ha="right", va="bottom", fontsize=6, color="#666666")
    return fig
