"""Feature maps for pictures: capture chosen layers' outputs, pick channels, tile them into a mosaic.

Capture goes through :func:`resnet_xray.tracing.trace_model`, the project's one tracing
mechanism, asking it to keep full maps only for the layers that will be drawn.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..dissect import LayerRow, layer_table
from ..errors import XrayError
from ..tracing import Trace, TraceOptions, trace_model
from .names import resolve_layer

CHANNEL_ORDERS = ("first", "top")


@dataclass
class Capture:
    logits: torch.Tensor  # (N, classes) from the same forward pass that produced the maps
    maps: dict[str, torch.Tensor]  # layer name -> output of the first image, without the batch axis
    trace: Trace  # statistics of every layer and block from the same pass


def layer_rows(model: nn.Module, input_size: int) -> list[LayerRow]:
    """The anatomy's rows, whose names are the names ``--layer`` accepts."""
    return layer_table(model, input_size)


def check_feature_layer(name: str, rows: list[LayerRow]) -> str:
    names = [r.name for r in rows]
    resolve_layer(name, names)
    row = next(r for r in rows if r.name == name)
    if len(row.output_shape) != 3:
        shape = "x".join(map(str, row.output_shape))
        raise XrayError(f"--layer {name!r}: its output ({shape}) has no spatial maps to draw; choose a conv, bn, relu, add or pool layer")
    return name


def capture(model: nn.Module, x: torch.Tensor, names: Iterable[str]) -> Capture:
    """Run one forward pass of ``x`` through ``model`` and keep the outputs of ``names``."""
    keep = set(names)
    tr = trace_model(model, x, TraceOptions(keep_maps=keep))
    return Capture(tr.logits, {n: tr.maps[n][0] for n in keep}, tr)


def pick_channels(fmap: torch.Tensor, order: str = "first", count: int = 64) -> list[int]:
    """Channel indices to draw: the first ``count``, or the ``count`` with the highest mean activation."""
    if order not in CHANNEL_ORDERS:
        raise XrayError(f"--channels {order!r}: choose one of {', '.join(CHANNEL_ORDERS)}")
    c = fmap.shape[0]
    count = min(count, c)
    if order == "first":
        return list(range(count))
    means = fmap.float().flatten(1).mean(dim=1)
    return [int(i) for i in torch.argsort(means, descending=True, stable=True)[:count]]


def grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns for ``n`` tiles: 8 x 8 for 64, as square as possible otherwise."""
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    return rows, cols


def resize_tiles(tiles: torch.Tensor, side: int) -> torch.Tensor:
    """Area-average down or nearest-neighbour up an (n, h, w) stack to ``side`` x ``side`` in one call."""
    if tiles.shape[-1] == side and tiles.shape[-2] == side:
        return tiles
    mode = "area" if tiles.shape[-1] > side else "nearest"
    return torch.nn.functional.interpolate(tiles[:, None], size=(side, side), mode=mode)[:, 0]


def mosaic(fmap: torch.Tensor, channels: list[int], tile: int | None = None, gap: int = 1) -> np.ndarray:
    """Tile the chosen channels of a C x H x W map into one 2-D array, with NaN in the gaps.

    Values are kept as they are (no per-tile rescaling), so one colour scale reads the whole grid.
    """
    side = tile or fmap.shape[1]
    tiles = resize_tiles(fmap.detach()[channels].float().cpu(), side).numpy()
    rows, cols = grid_shape(len(channels))
    out = np.full((rows * side + (rows - 1) * gap, cols * side + (cols - 1) * gap), np.nan, dtype=np.float32)
    for k in range(len(channels)):
        r, c = divmod(k, cols)
        y, x = r * (side + gap), c * (side + gap)
        out[y:y + side, x:x + side] = tiles[k]
    return out
