"""The article's explanatory sections, computed from the image and the model in hand.

Each function returns plain numbers (for report.json and the paragraph) and a
figure; nothing here is typed in. Preprocessing is redone step by step and checked
against the pipeline's own tensor; the kernel and channel-fusion sums are done by
hand and checked against the real layer outputs kept by the trace.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torchvision.transforms as T
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image
from torch import nn

from ..image import Preprocessing
from ..viz.canvas import new_figure, stamp

# An "oriented edge" kernel, measured: the grey (RGB-mean) part of the 7x7 filter carries most of
# its energy, and its structure tensor has one dominant direction (coherence (l1-l2)/(l1+l2)).
EDGE_COHERENCE = 0.6
EDGE_GREY_SHARE = 0.5
# A "colour-opponent" kernel: nearly all of its energy is in the differences between channels.
COLOUR_SHARE = 0.85  # noise puts about 2/3 there by chance


# 1. Preprocessing ------------------------------------------------------------------------------------

def preprocessing_steps(img: Image.Image, pp: Preprocessing, x: torch.Tensor, weights: Any) -> tuple[dict[str, Any], Figure]:
    """Redo Resize, CenterCrop, ToTensor and Normalize one at a time; each step's picture and numbers."""
    interp = T.InterpolationMode(pp.interpolation)
    resized = T.Resize(pp.resize, interpolation=interp, antialias=True)(img)
    cropped = T.CenterCrop(pp.crop)(resized)
    t = T.ToTensor()(cropped)
    norm = T.Normalize(pp.mean, pp.std)(t)
    rw, rh = resized.size
    left, top = int(round((rw - pp.crop) / 2.0)), int(round((rh - pp.crop) / 2.0))

    def chan(v: torch.Tensor) -> dict[str, list[float]]:
        f = v.flatten(1).double()
        return {"mean": f.mean(1).tolist(), "std": f.std(1, correction=0).tolist(), "min": f.min(1).values.tolist(),
                "max": f.max(1).values.tolist()}

    data = {
        "original_size": list(img.size),
        "resize": {"to": pp.resize, "size": [rw, rh], "scale": rw / img.size[0]},
        "crop": {"to": pp.crop, "left": left, "top": top, "kept_share": pp.crop * pp.crop / (rw * rh)},
        "to_tensor": chan(t),
        "normalize": {"subtract": list(pp.mean), "divide": list(pp.std), **chan(norm)},
        "matches_pipeline": bool(torch.equal(norm, x[0].cpu())),  # the step-by-step tensor is the network's input
    }
    fig = new_figure(10.0, 5.2)
    axes = fig.subplots(2, 3)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].imshow(img)
    # two short lines per title: a portrait photo leaves a narrow column, and long titles ran into each other
    axes[0, 0].set_title(f"1. the file\n{img.size[0]}x{img.size[1]}", fontsize=8)
    axes[0, 1].imshow(resized)
    axes[0, 1].add_patch(Rectangle((left, top), pp.crop, pp.crop, fill=False, edgecolor="yellow", linewidth=1.5))
    axes[0, 1].set_title(f"2. Resize({pp.resize}): {rw}x{rh}\ncrop box in yellow", fontsize=8)
    axes[0, 2].imshow(cropped)
    means = ", ".join(f"{m:.2f}" for m in data["to_tensor"]["mean"])
    axes[0, 2].set_title(f"3. CenterCrop({pp.crop}) + ToTensor: 0..1\nRGB means {means}", fontsize=8)
    lim = float(norm.abs().max())
    for c, name in enumerate("RGB"):
        ax = axes[1, c]
        im = ax.imshow(norm[c].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"4. Normalize, {name}: (x-{pp.mean[c]:.3f})/{pp.std[c]:.3f}\nmean {data['normalize']['mean'][c]:+.2f}, "
                     f"range [{data['normalize']['min'][c]:.2f}, {data['normalize']['max'][c]:.2f}]", fontsize=7)
    fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.8, label="network input value")
    return data, stamp(fig, weights, warn=False)  # no weight goes into preprocessing


# 2. One kernel, one output value by hand ---------------------------------------------------------------

def kernel_worked(conv: nn.Conv2d, x: torch.Tensor, out: torch.Tensor, rgb: np.ndarray, weights: Any) -> tuple[dict[str, Any], Figure]:
    """One conv1 filter at one output position: the products summed by hand, against the real output.

    Args:
        conv: the model's first conv (3 input channels).
        x: the network input, 1x3xHxW.
        out: conv's real output on x (C x H' x W'), as the trace kept it.
        rgb: the de-normalised input picture (H x W x 3, uint8).
    """
    w = conv.weight.detach().double().cpu()
    xin = x[0].detach().double().cpu()
    o = out.detach().double().cpu()
    k = int(o.flatten(1).abs().mean(1).argmax())  # the filter that responds most on this image
    ch = o[k]
    flat = int(ch.abs().argmax())
    oy, ox = divmod(flat, ch.shape[1])
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    y0, x0 = oy * sh - ph, ox * sw - pw  # top-left input pixel under the filter (may be in the padding)
    padded = torch.nn.functional.pad(xin, (pw, pw, ph, ph))
    patch = padded[:, y0 + ph:y0 + ph + kh, x0 + pw:x0 + pw + kw]
    prods = patch * w[k]
    per_channel = prods.flatten(1).sum(1).tolist()
    bias = float(conv.bias.detach()[k]) if conv.bias is not None else 0.0
    by_hand = sum(per_channel) + bias
    real = float(ch[oy, ox])
    data = {
        "layer": "conv1", "filter": k, "kernel": [kh, kw], "stride": sh, "padding": ph, "output_shape": list(o.shape),
        "position": [oy, ox], "input_rows": [y0, y0 + kh - 1], "input_cols": [x0, x0 + kw - 1],
        "per_channel": per_channel, "bias": bias, "by_hand": by_hand, "real": real, "abs_diff": abs(by_hand - real),
        "patch_R": patch[0].tolist(), "weights_R": w[k, 0].tolist(), "terms": kh * kw * w.shape[1],
    }
    fig = new_figure(10.0, 3.4)
    ax = fig.subplots(1, 4)
    for a in ax:
        a.set_xticks([])
        a.set_yticks([])
    ax[0].imshow(rgb)
    ax[0].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), kw, kh, fill=False, edgecolor="yellow", linewidth=1.5))
    ax[0].set_title(f"input: filter #{k} at\nrows {y0}..{y0 + kh - 1}, cols {x0}..{x0 + kw - 1}", fontsize=7)
    zoom = rgb[max(y0, 0):y0 + kh, max(x0, 0):x0 + kw]
    ax[1].imshow(zoom if zoom.size else np.zeros((kh, kw, 3), np.uint8), interpolation="nearest")
    ax[1].set_title(f"the {kh}x{kw} patch\nit sees", fontsize=7)
    m = float(w[k].abs().max()) or 1.0
    ax[2].imshow(((w[k] / (2 * m)) + 0.5).clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
    ax[2].set_title(f"filter #{k} ({w.shape[1]}x{kh}x{kw})\ngrey = 0", fontsize=7)
    lim = float(ch.abs().max()) or 1.0
    ax[3].imshow(ch.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax[3].plot([ox], [oy], marker="s", markersize=6, markerfacecolor="none", markeredgecolor="black")
    ax[3].set_title(f"its output map {o.shape[1]}x{o.shape[2]}\nsquare = ({oy}, {ox}) = {real:.4g}", fontsize=7)
    return data, stamp(fig, weights)


# 3. Channels fuse ------------------------------------------------------------------------------------

def channel_fusion(conv: nn.Conv2d, name: str, inp: torch.Tensor, out: torch.Tensor, weights: Any,
                   top: int = 4) -> tuple[dict[str, Any], Figure]:
    """One output channel of ``conv`` as the sum of its input channels' contributions; the top ones drawn.

    Args:
        conv: a conv with groups == 1.
        name: its layer name.
        inp: its real input (Cin x H x W), as the trace kept it.
        out: its real output (Cout x H' x W'), as the trace kept it.
    """
    xin = inp.detach().float().cpu()[None]
    o = out.detach().float().cpu()
    c = int(o.flatten(1).mean(1).argmax())  # the output channel most active on this image
    wk = conv.weight.detach().float().cpu()[c]  # (Cin, k, k)
    # One contribution map per input channel: a depthwise conv with this output channel's weights.
    contrib = torch.nn.functional.conv2d(xin, wk[:, None], stride=conv.stride, padding=conv.padding, groups=wk.shape[0])[0]
    total = contrib.sum(0) + (conv.bias.detach()[c] if conv.bias is not None else 0)
    norms = contrib.flatten(1).norm(dim=1)
    order = [int(i) for i in torch.argsort(norms, descending=True)[:top]]
    share = float((contrib[order].sum(0)).norm() / total.norm()) if float(total.norm()) > 0 else float("nan")
    rest = total - contrib[order].sum(0)
    kk = conv.kernel_size[0]
    data = {
        "layer": name, "kernel": kk, "in_channels": int(wk.shape[0]), "out_channel": c, "top": order,
        "weights": [float(wk[i].sum()) for i in order],  # a 1x1 conv's weight; the kxk kernel's sum otherwise
        "contribution_norms": [float(norms[i]) for i in order], "top_share": share,
        "max_abs_diff": float((total - o[c]).abs().max()), "out_norm": float(o[c].norm()),
    }
    fig = new_figure(10.0, 2.6)
    n = len(order) + 2
    ax = fig.subplots(1, n)
    lim = float(max(contrib[order].abs().max(), total.abs().max())) or 1.0
    for a in ax:
        a.set_xticks([])
        a.set_yticks([])
    for j, i in enumerate(order):
        ax[j].imshow(contrib[i].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        wt = f"w = {float(wk[i].sum()):+.3f}" if kk == 1 else f"{kk}x{kk} kernel"
        ax[j].set_title(f"{'+ ' if j else ''}in #{i} x ({wt})", fontsize=7)
    ax[-2].imshow(rest.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax[-2].set_title(f"+ the other {wk.shape[0] - len(order)} channels", fontsize=7)
    ax[-1].imshow(o[c].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax[-1].set_title(f"= {name} channel #{c}", fontsize=7)
    return data, stamp(fig, weights)


# 4. conv1 kernels, measured ---------------------------------------------------------------------------

def classify_kernels(w: torch.Tensor) -> dict[str, Any]:
    """Count conv1 filters that are oriented edges or colour-opponent by the measured criteria above."""
    w = w.detach().double().cpu()
    grey = w.mean(1)  # (out, k, k)
    energy = w.flatten(1).pow(2).sum(1)
    grey_share = (grey.flatten(1).pow(2).sum(1) * w.shape[1]) / energy.clamp_min(1e-30)
    coherence = []
    for g in grey.numpy():
        gy, gx = np.gradient(g)
        jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
        tr = jxx + jyy
        disc = np.sqrt(max((jxx - jyy) ** 2 + 4 * jxy * jxy, 0.0))
        coherence.append(disc / tr if tr > 0 else 0.0)
    coh = np.array(coherence)
    gs = grey_share.numpy()
    edges = (coh >= EDGE_COHERENCE) & (gs >= EDGE_GREY_SHARE)
    colour = (1 - gs) >= COLOUR_SHARE
    return {
        "count": int(w.shape[0]), "oriented_edges": int(edges.sum()), "colour_opponent": int(colour.sum()),
        "criterion": (f"oriented edge: the grey (RGB-mean) part holds >= {EDGE_GREY_SHARE:.0%} of the filter's energy and its "
                      f"structure-tensor coherence is >= {EDGE_COHERENCE}; colour-opponent: >= {COLOUR_SHARE:.0%} of the energy "
                      "is in the differences between R, G and B"),
        "edge_filters": [int(i) for i in np.flatnonzero(edges)],
    }


def kernel_baseline(conv: nn.Conv2d, seed: int = 0) -> dict[str, Any]:
    """The same counts for a freshly initialised conv of the same shape: what chance alone gives."""
    g = torch.Generator().manual_seed(seed)
    fresh = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, bias=False)
    with torch.no_grad():
        bound = float(fresh.weight.abs().max())
        fresh.weight.copy_((torch.rand(fresh.weight.shape, generator=g) * 2 - 1) * bound)
    return classify_kernels(fresh.weight)


# 6. Shortcuts A and B ----------------------------------------------------------------------------------

def shortcut_options(block: nn.Module, name: str, block_input: torch.Tensor, shortcut_out: torch.Tensor,
                     residual: torch.Tensor) -> tuple[dict[str, Any], tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]]:
    """Option A (the article's: a 1x1 conv, no BatchNorm) against option B (1x1 conv with stride + BN, torchvision's).

    Option A is evaluated with the block's own projection conv weights but without its BatchNorm,
    so the two differ by exactly what the article says distinguishes them.

    Args:
        block: the torchvision block with a ``downsample`` (conv, bn).
        block_input: x, the block's input (C x H x W), from the trace.
        shortcut_out: the real option-B output, downsample(x), from the trace.
        residual: F(x), the main path's output, from the trace.
    """
    conv, bn = block.downsample[0], block.downsample[1]
    with torch.no_grad():
        # Option A changes channels only: the same 1x1 weights at stride 1, no BatchNorm.
        a = torch.nn.functional.conv2d(block_input[None].float(), conv.weight.float(), conv.bias)[0]
    b = shortcut_out.float()
    f = residual.float()
    fits = tuple(a.shape) == tuple(f.shape)

    def cos(u: torch.Tensor, v: torch.Tensor) -> float:
        d = float(u.norm() * v.norm())
        return float((u * v).sum()) / d if d > 0 else float("nan")

    ca = a.flatten(1)
    return {
        "block": name,
        "in_channels": conv.in_channels, "out_channels": conv.out_channels, "stride": conv.stride[0],
        "in_shape": list(block_input.shape), "out_shape": list(b.shape),
        "conv_params": sum(p.numel() for p in conv.parameters()), "bn_params": sum(p.numel() for p in bn.parameters()),
        "a_norm": float(a.norm()), "b_norm": float(b.norm()), "f_norm": float(f.norm()),
        "a_channel_std_spread": float(ca.std(1).max() / ca.std(1).clamp_min(1e-12).min()),
        "b_channel_std_spread": float(b.flatten(1).std(1).max() / b.flatten(1).std(1).clamp_min(1e-12).min()),
        "a_shape": list(a.shape), "a_fits": fits,
        # At initialisation a BatchNorm is the identity map (mean 0, var 1, weight 1, bias 0): then A and B coincide.
        "bn_changes_it": bool(not fits or not torch.allclose(a, b, rtol=1e-5, atol=1e-6)),
        "cos_a_f": cos(a, f) if fits else None, "cos_b_f": cos(b, f),
        "torchvision_uses": "B",
    }, (a if fits else None, b, f)


# Charts for the sections whose numbers come from the trace and the anatomy ----------------------------

def shortcut_figure(a: torch.Tensor | None, b: torch.Tensor, f: torch.Tensor, block: str, weights: Any) -> Figure:
    """Per-channel scale (std) of option A's output, option B's output and F(x), sorted: what the BatchNorm evens out."""
    fig = new_figure(7.0, 2.8)
    ax = fig.add_subplot()
    for t, label, colour in ((a, "option A: 1x1 conv, no BN", "tab:red"), (b, "option B: 1x1 conv + BN (torchvision)", "tab:blue"),
                             (f, "F(x), the residual branch", "tab:orange")):
        if t is None:
            continue
        sd = np.sort(t.detach().float().flatten(1).std(1).cpu().numpy())[::-1]
        ax.plot(np.arange(1, len(sd) + 1), sd, label=label, color=colour)
    ax.set_yscale("log")
    ax.set_xlabel("output channel, sorted by scale")
    ax.set_ylabel("std over the map")
    ax.set_title(f"{block}: per-channel scale of the two shortcut options and F(x), on this image", fontsize=9)
    ax.legend(fontsize=7)
    return stamp(fig, weights)


def walkthrough_figure(steps: list[dict[str, Any]], block: str, weights: Any) -> Figure:
    """The norm of each step's output in the block, labelled with its shape."""
    fig = new_figure(8.0, 3.0)
    ax = fig.add_subplot()
    names = [s["name"].split(".", 2)[-1] for s in steps]
    colours = ["tab:blue" if "conv" in n or "downsample.0" in n else "tab:gray" if n.startswith("bn") or "downsample.1" in n
               else "tab:green" if n == "add" else "tab:orange" for n in names]
    ax.bar(range(len(steps)), [s["l2"] for s in steps], color=colours)
    for i, s in enumerate(steps):
        ax.annotate("x".join(map(str, s["out_shape"][1:])), (i, s["l2"]), ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(steps)), names, rotation=40, fontsize=7)
    ax.set_ylabel("||output|| on this image")
    ax.set_ylim(0, max(s["l2"] for s in steps) * 1.5)
    ax.set_title(f"{block}: each step's output norm and shape, read from the trace", fontsize=9)
    return stamp(fig, weights)


def cost_figure(by_stage: dict[str, dict[str, Any]], labels: dict[str, str], weights: Any) -> Figure:
    """Parameter and multiply-add shares per stage, side by side."""
    fig = new_figure(7.0, 2.8)
    ax = fig.add_subplot()
    keys = list(by_stage)
    xs = np.arange(len(keys))
    ax.bar(xs - 0.2, [by_stage[k]["params_share"] * 100 for k in keys], 0.4, label="parameters", color="tab:purple")
    ax.bar(xs + 0.2, [by_stage[k]["macs_share"] * 100 for k in keys], 0.4, label="multiply-adds", color="tab:green")
    ax.set_xticks(xs, [labels.get(k, k).split(":")[0] for k in keys], fontsize=7)
    ax.set_ylabel("% of the model")
    ax.set_title("Where the parameters and the compute are, by stage (measured)", fontsize=9)
    ax.legend(fontsize=7)
    return stamp(fig, weights, warn=False)  # shares of the architecture, whatever the weights


def conclusion_figure(stages: list[dict[str, Any]], weights: Any) -> Figure:
    """Receptive field, channels and map side per stage: the hierarchy in three numbers."""
    fig = new_figure(7.0, 2.6)
    ax = fig.add_subplot()
    xs = np.arange(len(stages))
    ax.plot(xs, [s["receptive_field"] for s in stages], "o-", label="receptive field (px)", color="tab:blue")
    ax.plot(xs, [s["shape"][0] for s in stages], "s-", label="channels", color="tab:orange")
    ax.plot(xs, [s["shape"][1] for s in stages], "^-", label="map side (px)", color="tab:green")
    ax.set_yscale("log")
    ax.set_xticks(xs, [s["stage"] for s in stages], fontsize=7)
    ax.set_title("Kernels see more, channels multiply, maps shrink: this run's numbers per stage", fontsize=9)
    ax.legend(fontsize=7)
    return stamp(fig, weights, warn=False)  # shapes and receptive fields, whatever the weights
