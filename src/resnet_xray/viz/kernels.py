"""Kernel pictures: what a convolution's learned weights look like, with a caption saying what is drawn.

conv1's filters see RGB pixels, so each is drawn as a colour patch. Deeper filters
see hundreds of channels, so no single picture is the whole filter: k x k layers
show one slice per filter, 1 x 1 layers show the weight matrix of channel mixing.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from ..errors import XrayError
from ..options import at_least, option
from .canvas import new_figure
from .features import colourize
from .maps import mosaic
from .names import resolve_layer

KERNEL_CMAP = "RdBu_r"  # diverging: red positive, blue negative, white zero


@dataclass
class KernelsOptions:
    layer: str = option("conv1", "Conv2d module name")
    count: int = option(64, "filters to draw")

    def __post_init__(self) -> None:
        at_least("count", self.count, 1)


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def find_conv(model: nn.Module, name: str) -> nn.Conv2d:
    convs = conv_layers(model)
    resolve_layer(name, list(convs), what="conv layer")
    return convs[name]


def rgb_patches(w: torch.Tensor) -> tuple[np.ndarray, float]:
    """Filters (out, 3, k, k) as RGB patches on one shared scale: grey is 0, full colour is +-max|w|."""
    w = w.detach().float().cpu()
    m = float(w.abs().max()) or 1.0
    return ((w / (2 * m)) + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy(), m


def strongest_slices(w: torch.Tensor, count: int) -> tuple[np.ndarray, list[int]]:
    """For each of the first ``count`` filters, its k x k slice on the input channel with the largest L2 norm."""
    w = w.detach().float().cpu()[:count]
    idx = w.flatten(2).norm(dim=2).argmax(dim=1)
    return w[torch.arange(w.shape[0]), idx].numpy(), [int(i) for i in idx]


def kernel_figure(model: nn.Module, options: KernelsOptions | None = None) -> tuple[Figure, str]:
    """Draw a conv layer's weights; returns the figure and its caption (also printed on it)."""
    opts = options or KernelsOptions()
    conv = find_conv(model, opts.layer)
    w = conv.weight
    out_c, in_c, kh, kw = w.shape
    shape = f"{out_c} x {in_c} x {kh} x {kw}"
    if in_c == 3 and conv.groups == 1:
        return _rgb_figure(opts.layer, w, shape, opts.count)
    if kh * kw > 1:
        return _slice_figure(opts.layer, w, shape, opts.count)
    return _matrix_figure(opts.layer, w, shape)


def _tile_axes(fig: Figure, n: int) -> list:
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    return list(axes)


def _rgb_figure(name: str, w: torch.Tensor, shape: str, count: int) -> tuple[Figure, str]:
    patches, m = rgb_patches(w[:count])
    caption = (f"{name} weights ({shape}): each of the {len(patches)} filters drawn as an RGB patch, "
               f"all on one scale: grey = 0, full colour = +-{m:.3g}")
    fig = new_figure(6.4, 7.0)
    for k, ax in enumerate(_tile_axes(fig, len(patches))):
        if k < len(patches):
            ax.imshow(patches[k], interpolation="nearest")
    fig.suptitle(_wrap(caption), fontsize=8)
    return fig, caption


def _slice_figure(name: str, w: torch.Tensor, shape: str, count: int) -> tuple[Figure, str]:
    slices, chans = strongest_slices(w, count)
    m = float(np.abs(slices).max()) or 1.0
    caption = (f"{name} weights ({shape}): NOT whole filters. For each of the first {len(slices)} filters, "
               f"the {w.shape[2]}x{w.shape[3]} slice on its strongest input channel (largest L2 norm; channel number "
               f"above each tile); one scale, red > 0 > blue, +-{m:.3g}")
    fig = new_figure(6.4, 7.2)
    for k, ax in enumerate(_tile_axes(fig, len(slices))):
        if k < len(slices):
            ax.imshow(slices[k], cmap=KERNEL_CMAP, vmin=-m, vmax=m, interpolation="nearest")
            ax.set_title(f"in {chans[k]}", fontsize=5, pad=1)
    fig.suptitle(_wrap(caption), fontsize=8)
    return fig, caption


def _matrix_figure(name: str, w: torch.Tensor, shape: str) -> tuple[Figure, str]:
    mat = w.detach().float().cpu().flatten(1).numpy()
    m = float(np.abs(mat).max()) or 1.0
    norms = np.linalg.norm(mat, axis=1)
    caption = (f"{name} weights ({shape}): a 1x1 conv has one weight per (output, input) channel pair, so this is "
               f"the whole layer as one {mat.shape[0]} x {mat.shape[1]} channel-mixing matrix (red > 0 > blue, +-{m:.3g}); "
               f"right: each filter's L2 norm")
    fig = new_figure(7.4, 6.4)
    ax, axn = fig.subplots(1, 2, width_ratios=[5, 1], sharey=True)
    im = ax.imshow(mat, cmap=KERNEL_CMAP, vmin=-m, vmax=m, aspect="auto", interpolation="nearest")
    ax.set_xlabel("input channel", fontsize=8)
    ax.set_ylabel("output channel (filter)", fontsize=8)
    axn.barh(np.arange(len(norms)), norms, height=1.0, color="#555")
    axn.set_xlabel("L2 norm", fontsize=8)
    for a in (ax, axn):
        a.tick_params(labelsize=7)
    fig.colorbar(im, ax=axn, shrink=0.6)
    fig.suptitle(_wrap(caption), fontsize=8)
    return fig, caption


def _wrap(text: str, width: int = 110) -> str:
    return "\n".join(textwrap.wrap(text, width))


def check_count(count: int) -> int:
    if count < 1:
        raise XrayError(f"--count {count}: must be at least 1")
    return count


def _tile_rgb(patches: np.ndarray, gap: int = 1) -> np.ndarray:
    n, k = patches.shape[0], patches.shape[1]
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    out = np.ones((rows * (k + gap) - gap, cols * (k + gap) - gap, 3), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (k + gap):r * (k + gap) + k, c * (k + gap):c * (k + gap) + k] = patches[i]
    return (out * 255).round().astype(np.uint8)


def kernel_image(conv: nn.Conv2d, name: str, count: int = 64, max_side: int = 256) -> tuple[np.ndarray, str]:
    """The same three pictures as :func:`kernel_figure`, as a small RGB array (no matplotlib), with a caption."""
    w = conv.weight.detach().float().cpu()
    out_c, in_c, kh, kw = w.shape
    shape = f"{out_c}x{in_c}x{kh}x{kw}"
    if in_c == 3 and conv.groups == 1:
        patches, m = rgb_patches(w[:count])
        return _tile_rgb(patches), f"{name} ({shape}): {len(patches)} filters as RGB patches; grey = 0, full colour = ±{m:.3g}"
    if kh * kw > 1:
        slices, _ = strongest_slices(w, count)
        m = float(np.abs(slices).max()) or 1.0
        img = colourize(mosaic(torch.from_numpy(slices), list(range(len(slices)))), -m, m, KERNEL_CMAP)
        return img, (f"{name} ({shape}): not whole filters; each tile is one filter's {kh}x{kw} slice on its strongest "
                     f"input channel; red > 0 > blue, ±{m:.3g}")
    mat = w.flatten(1)
    if max(mat.shape) > max_side:  # average blocks of weights so the picture stays small
        step = int(np.ceil(max(mat.shape) / max_side))
        mat = torch.nn.functional.avg_pool2d(mat[None, None], step, ceil_mode=True)[0, 0]
        note = f" (each pixel averages {step}x{step} weights)"
    else:
        note = ""
    m = float(mat.abs().max()) or 1.0
    img = colourize(mat.numpy(), -m, m, KERNEL_CMAP)
    return img, f"{name} ({shape}): 1x1 conv = channel-mixing matrix, rows = output, columns = input{note}; red > 0 > blue, ±{m:.3g}"
