"""Tensors as the page's pictures: PNG bytes, made only when the page asks for one.

Colours come from :mod:`resnet_xray.viz` (one colour scale per grid, red/blue for
signed values), tiles from its mosaic, channel choice from its ``pick_channels``. PNGs
are written with light compression: a click waits on the encode, a local page does not
wait on the bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..dissect import LayerRow
from ..viz.cam import overlay
from ..viz.features import FEATURE_CMAP, colourize
from ..viz.kernels import KERNEL_CMAP
from ..viz.maps import grid_shape, mosaic, pick_channels

GRID_CHANNELS = 64  # channels drawn in a layer's grid, strongest first
GRID_TILE = 56  # largest tile side in the grid; bigger maps are area-averaged down (the full map is one click away)
KERNEL_INPUTS = 16  # input-channel slices shown for one output channel


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def image_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def channel_strengths(fmap: torch.Tensor) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Channels of a C x H x W map, strongest (highest mean activation) first, with each one's mean and max."""
    order = pick_channels(fmap, "top", fmap.shape[0])
    flat = fmap.float().flatten(1)
    return order, flat.mean(1), flat.amax(1)


@dataclass
class Grid:
    """A layer's strongest channels tiled, and where each tile sits, so a click on the picture names its channel."""

    channels: list[int]
    rows: int
    cols: int
    tile: int
    gap: int
    vmin: float
    vmax: float
    png: bytes


def layer_grid(fmap: torch.Tensor, count: int = GRID_CHANNELS) -> Grid:
    channels = pick_channels(fmap, "top", count)
    tile = min(fmap.shape[-1], GRID_TILE)
    img = mosaic(fmap, channels, tile)
    finite = img[np.isfinite(img)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    rows, cols = grid_shape(len(channels))
    return Grid(channels, rows, cols, tile, 1, vmin, vmax, png(colourize(img, vmin, vmax)))


def channel_png(plane: torch.Tensor) -> tuple[bytes, float, float]:
    """One channel at its own resolution on its own scale (the page enlarges it without smoothing)."""
    a = plane.detach().float().cpu().numpy()
    lo, hi = float(a.min()), float(a.max())
    return png(colourize(a, lo, hi, FEATURE_CMAP)), lo, hi


def receptive_box(row: LayerRow, y: int, x: int, side: int) -> list[int]:
    """The input square (left, top, right, bottom; inclusive, clipped to the crop) that unit (y, x) of ``row`` sees.

    torchvision's ResNets pad every conv and pool by (k - 1) / 2, so unit (i, j) is centred on input
    pixel (i * jump, j * jump); the square is the theoretical receptive field, padding included.
    """
    half = (row.receptive_field - 1) // 2
    cy, cx = y * row.jump, x * row.jump
    clip = lambda v: int(min(max(v, 0), side - 1))  # noqa: E731 - one expression, used four times
    return [clip(cx - half), clip(cy - half), clip(cx + half), clip(cy + half)]


def feeding_conv(rows: list[LayerRow], name: str) -> str | None:
    """The conv whose filter for a channel feeds that channel of op ``name`` (itself, for a conv).

    BatchNorm, ReLU and pooling keep channels apart, so a channel of theirs is the channel of
    the conv before them; a block's add is fed by its residual branch's last conv.
    """
    names = [r.name for r in rows]
    if name not in names:
        return None
    block = name.rsplit(".", 1)[0] if "." in name else ""
    for r in reversed(rows[: names.index(name) + 1]):
        if r.type == "fc":
            return None
        if r.type == "conv" and (not block or r.name.rsplit(".", 1)[0] == block):
            return r.name  # the stem and the head take the last conv before them
    return None


def kernel_slices(conv: nn.Conv2d, channel: int, count: int = KERNEL_INPUTS) -> tuple[bytes, list[dict[str, float]], str]:
    """The k x k slices of output ``channel``'s filter on its ``count`` strongest input channels, as one picture.

    Returns the PNG, ``[{"input": c, "norm": ||slice||}]`` in the drawn order, and a caption.
    """
    w = conv.weight.detach().float().cpu()[channel]  # in x k x k
    norms = w.flatten(1).norm(dim=1)
    inputs = [int(i) for i in torch.argsort(norms, descending=True, stable=True)[:count]]
    m = float(w[inputs].abs().max()) or 1.0
    k = w.shape[-1]
    scale = max(1, 48 // k)  # tiles of about 48 px, pixels kept square
    tiles = w[inputs].repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    img = colourize(mosaic(tiles, list(range(len(inputs))), gap=2), -m, m, KERNEL_CMAP)
    listed = [{"input": c, "norm": float(norms[c])} for c in inputs]
    caption = (f"{len(inputs)} of {w.shape[0]} input channels, strongest first: each tile is the {k}x{k} slice that "
               f"multiplies one input channel; red > 0 > blue, ±{m:.3g}")
    return png(img), listed, caption


def rgb_filter_png(conv: nn.Conv2d, channel: int) -> bytes | None:
    """A filter that reads RGB pixels as one colour patch (grey is 0), enlarged; None for deeper filters."""
    w = conv.weight.detach().float().cpu()[channel]
    if w.shape[0] != 3:
        return None
    m = float(w.abs().max()) or 1.0
    patch = ((w / (2 * m)) + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()
    scale = max(1, 96 // w.shape[-1])
    patch = patch.repeat(scale, 0).repeat(scale, 1)
    return png((patch * 255).round().astype(np.uint8))


def normalised_channel_png(x: torch.Tensor, c: int, lim: float) -> bytes:
    """One channel of the network's input on a red/blue scale centred on 0 (the dataset mean)."""
    return png(colourize(x[0, c].float().numpy(), -lim, lim, KERNEL_CMAP))


def cam_heat(cam: np.ndarray, side: int) -> np.ndarray:
    """A raw h x w class map as Grad-CAM draws its own: negatives cut, scaled to [0, 1], resized to the side x side input."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    return scale_cam_image(np.maximum(cam, 0)[None], (side, side))[0]


def cam_png(rgb: np.ndarray, heat: np.ndarray) -> bytes:
    return png((overlay(rgb, heat) * 255).round().astype(np.uint8))
