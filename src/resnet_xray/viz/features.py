"""Feature-map grids: 64 channels of one layer's output as an 8 x 8 mosaic with one colour scale."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from ..options import at_least, one_of, option
from .canvas import new_figure
from .maps import grid_shape, mosaic, pick_channels

FEATURE_CMAP = "viridis"


@dataclass
class FeaturesOptions:
    layer: str = option("layer1.0.relu_2", "layer name as in `resnet-xray anatomy`, e.g. layer1.0.relu_2")
    channels: str = option("first", "first: channels 0-63 (as in the article); top: the 64 with the highest mean activation")
    count: int = option(64, "tiles in the grid (8 x 8)")

    def __post_init__(self) -> None:
        one_of("channels", self.channels, ("first", "top"))
        at_least("count", self.count, 1)


@dataclass
class FeatureGrid:
    """What a grid shows, so captions and the report's JSON can say it exactly."""

    layer: str
    shape: tuple[int, ...]  # C x H x W of the layer's output
    channels: list[int]
    order: str
    vmin: float  # the colour scale, shared by every tile
    vmax: float
    image: np.ndarray  # the mosaic (NaN between tiles)

    def caption(self) -> str:
        shape = "x".join(map(str, self.shape))
        which = f"channels 0-{len(self.channels) - 1}" if self.order == "first" else f"the {len(self.channels)} channels with the highest mean activation"
        return f"{self.layer}: output {shape}; {which}; one colour scale [{self.vmin:.3g}, {self.vmax:.3g}]"


def feature_grid(layer: str, fmap: torch.Tensor, order: str = "first", count: int = 64, tile: int | None = None) -> FeatureGrid:
    """Choose channels of ``fmap`` (C x H x W) and tile them; the colour range covers the drawn tiles."""
    channels = pick_channels(fmap, order, count)
    img = mosaic(fmap, channels, tile)
    finite = img[np.isfinite(img)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return FeatureGrid(layer, tuple(fmap.shape), channels, order, vmin, vmax, img)


def feature_figure(grid: FeatureGrid) -> Figure:
    """The article's ``visualize_feature`` 8 x 8 grid, with layer name, shape and colour bar on the figure."""
    rows, cols = grid_shape(len(grid.channels))
    width, bar, pad = 7.6, 0.15, 0.01  # the colour bar takes its share of the width, and its labels sit in that share
    image_w = width * 0.96 * (1 - bar - pad)
    height = image_w * grid.image.shape[0] / grid.image.shape[1] + 0.45  # no empty band above or below the grid
    fig = new_figure(width, height, layout=None)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.1 / height, top=1 - 0.35 / height)
    ax = fig.add_subplot()
    vmax = grid.vmax if grid.vmax > grid.vmin else grid.vmin + 1e-6
    im = ax.imshow(np.ma.masked_invalid(grid.image), cmap=FEATURE_CMAP, vmin=grid.vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    side = (grid.image.shape[0] - (rows - 1)) / rows
    for k, ch in enumerate(grid.channels):
        r, c = divmod(k, cols)
        ax.text(c * (side + 1) + 0.5, r * (side + 1) + 0.5, str(ch), color="white", fontsize=5.5, va="top", ha="left",
                bbox={"boxstyle": "square,pad=0.1", "fc": "black", "alpha": 0.45, "lw": 0})
    shape = " x ".join(map(str, grid.shape))
    which = "first 64 channels" if grid.order == "first" else "64 most active channels (highest mean)"
    if len(grid.channels) < 64:
        which = f"all {len(grid.channels)} channels" if grid.order == "first" else f"{len(grid.channels)} channels, most active first"
    ax.set_title(f"{grid.layer}  |  output {shape} (C x H x W)  |  {which}", fontsize=9)
    cb = fig.colorbar(im, ax=ax, shrink=0.8, fraction=bar, pad=pad)
    cb.set_label("activation (one scale for all tiles)", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return fig


def colourize(img: np.ndarray, vmin: float, vmax: float, cmap: str = FEATURE_CMAP, gap_rgb: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Map a 2-D array onto a colour map as uint8 RGB; NaN (the gaps between tiles) becomes ``gap_rgb``."""
    span = vmax - vmin if vmax > vmin else 1.0
    norm = np.clip((np.nan_to_num(img, nan=vmin) - vmin) / span, 0, 1)
    lut = (colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    rgb = lut[(norm * 255).round().astype(np.intp)]
    rgb[~np.isfinite(img)] = gap_rgb
    return rgb


def grid_jpeg(grid: FeatureGrid, quality: int = 75) -> bytes:
    """The mosaic as a small JPEG (no matplotlib): fast enough to draw every layer of the report."""
    buf = io.BytesIO()
    Image.fromarray(colourize(grid.image, grid.vmin, grid.vmax)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
