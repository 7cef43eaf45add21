"""The first block of stage 1, step by step on a real input: shapes, costs and what each step does.

Every shape and norm is read from one trace of the model on the input in hand
(nothing is re-run by hand), parameter counts from the modules; the text around
them only says what the step is for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from .capture import trace_model


@dataclass
class Step:
    name: str  # anatomy name of the operation (layer1.0.conv1, layer1.0.add ...)
    what: str  # the operation with its real sizes: "1x1 conv 64->64, stride 1"
    role: str  # why it is there, in a few words
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: int
    macs: int  # multiply-accumulates (conv), element operations (bn, relu, add)
    l2: float  # norm of this step's output on the input in hand
    zero_frac: float | None  # fraction of exact zeros in the output (counted after ReLUs only, as in the trace)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["in_shape"], d["out_shape"] = list(self.in_shape), list(self.out_shape)
        return d


@dataclass
class Walkthrough:
    block: str  # layer1.0
    kind: str  # Bottleneck or BasicBlock
    input_from: str  # the layer that feeds the block (the stem's max pool)
    steps: list[Step]
    shortcut: str  # "projection" (option B: 1x1 conv + BN) or "identity"
    in_channels: int
    out_channels: int
    stride: int
    block_params: int
    shortcut_params: int
    residual_norm: float  # ||F(x)||
    shortcut_norm: float  # ||x|| or ||projection(x)||
    cosine: float  # between F(x) and the shortcut term
    later_reduce: tuple[int, int] | None  # (in, out) channels of the next block's 1x1 reduce
    stage_projections: list[dict[str, Any]] = field(default_factory=list)  # every projection in the model

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = [s.to_dict() for s in self.steps]
        d["text"] = self.text()
        return d

    def text(self) -> str:
        lines = [
            f"{self.block} ({self.kind}): {self.in_channels} channels in, {self.out_channels} out, stride {self.stride}; "
            f"input from {self.input_from}, shape {_shape(self.steps[0].in_shape)}",
            "",
            f"{'step':<24} {'operation':<34} {'output':<18} {'params':>9} {'MACs':>12} {'||out||':>10} {'zeros':>6}",
        ]
        for s in self.steps:
            lines.append(
                f"{s.name:<24} {s.what:<34} {_shape(s.out_shape):<18} {s.params:>9,} {s.macs:>12,} {s.l2:>10.2f} {'' if s.zero_frac is None else format(s.zero_frac, '.1%'):>6}"
            )
            lines.append(f"{'':<24}   {s.role}")
        lines += ["", *self._why()]
        return "\n".join(lines)

    def _why(self) -> list[str]:
        cin, cout = self.in_channels, self.out_channels
        out = []
        if self.later_reduce is not None and self.kind == "Bottleneck":
            a, b = self.later_reduce
            first = next(s for s in self.steps if s.name.endswith(".conv1"))
            out.append(
                f"The 1x1 reduce here takes the stem's {first.in_shape[1]} channels to {first.out_shape[1]}; "
                f"the later blocks of the stage reduce {a}->{b}, because their input is the previous block's "
                f"{a}-channel output."
            )
        if self.shortcut == "identity":
            out.append(
                f"Input and output have the same shape ({cin} channels, stride {self.stride}), so the shortcut is the "
                "identity: x is added unchanged and the block costs no extra parameters for it."
            )
            return out
        share = self.shortcut_params / self.block_params if self.block_params else float("nan")
        pad = cout - cin
        sub = f" and take every {self.stride}th pixel" if self.stride > 1 else ""
        out.append(
            f"Why a projection (option B) here and not option A: x has {cin} channels but F(x) has {cout}, so x cannot be "
            f"added as it is. Option A would pad x with {pad} zero channels{sub}: no parameters, but "
            f"{pad} of the {cout} output channels ({pad / cout:.0%}) would get no shortcut at all, so those channels "
            "would have no residual learning and the identity path would not carry their gradient."
        )
        out.append(
            f"Option B projects x with a 1x1 conv (stride {self.stride}) and a BatchNorm: {self.shortcut_params:,} parameters, "
            f"{share:.1%} of this block's {self.block_params:,}. Every output channel then has a learned shortcut, and the "
            "BatchNorm puts the projected x on the same footing as F(x), which also ends in a BatchNorm. He et al. (2015) "
            "found B slightly better than A and all-projection (C) only marginally better than B, so projections are used "
            "only where the shape changes and identity shortcuts everywhere else."
        )
        rel = "larger" if self.residual_norm > self.shortcut_norm else "smaller"
        out.append(
            f"Measured on this input: ||F(x)|| = {self.residual_norm:.2f}, ||projection(x)|| = {self.shortcut_norm:.2f} "
            f"(F(x) is {self.residual_norm / self.shortcut_norm:.2f}x the shortcut, {rel}); cosine between them "
            f"{self.cosine:+.3f}."
        )
        if self.stage_projections:
            where = ", ".join(f"{p['block']} ({p['in']}->{p['out']}, stride {p['stride']})" for p in self.stage_projections)
            out.append(f"Projections in this model: {where}; every other block adds x unchanged.")
        return out


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _conv_what(c: nn.Conv2d) -> str:
    k = c.kernel_size[0]
    return f"{k}x{k} conv {c.in_channels}->{c.out_channels}, stride {c.stride[0]}"


ROLES_BOTTLENECK = {
    "conv1": "1x1 reduce: mixes channels, no spatial context",
    "bn1": "normalise each channel",
    "relu": "first of the block's three ReLU calls",
    "conv2": "3x3 spatial: the only layer here that looks at neighbours",
    "bn2": "normalise each channel",
    "relu_1": "second ReLU call (the same module object in torchvision)",
    "conv3": "1x1 expand",
    "bn3": "F(x): the residual branch's output",
    "downsample.0": "projection shortcut (option B): match channels and stride",
    "downsample.1": "BatchNorm on the projection, like F(x)'s last step",
    "add": "the residual add",
    "relu_2": "after the add: the block's output",
}
ROLES_BASIC = {
    "conv1": "3x3 spatial",
    "bn1": "normalise each channel",
    "relu": "first ReLU call",
    "conv2": "3x3 spatial",
    "bn2": "F(x): the residual branch's output",
    "downsample.0": "projection shortcut (option B): match channels and stride",
    "downsample.1": "BatchNorm on the projection, like F(x)'s last step",
    "add": "the residual add",
    "relu_1": "after the add: the block's output",
}


def walkthrough(model: nn.Module, x: torch.Tensor | None = None, block: str = "layer1.0", trace=None) -> Walkthrough:
    """The operations of ``block``, step by step, with every number read from one trace of the model.

    Args:
        model: a torchvision ResNet.
        x: the preprocessed image, 1x3xHxW (or CHW); not needed when ``trace`` is given.
        block: which block to walk through; the first block of stage 1 by default.
        trace: a :class:`resnet_xray.tracing.Trace` of ``model`` on the image, to reuse (the report has one).

    Returns:
        A :class:`Walkthrough`; ``.text()`` prints it, ``.to_dict()`` serialises it.
    """
    blk = model.get_submodule(block)
    if not isinstance(blk, (Bottleneck, BasicBlock)):
        raise ValueError(f"{block} is a {type(blk).__name__}, not a torchvision residual block")
    if trace is None:
        if x is None:
            raise ValueError("walkthrough needs the input x or a trace")
        trace = trace_model(model, x if x.dim() == 4 else x.unsqueeze(0))
    layers = trace.layers
    idx = [i for i, r in enumerate(layers) if r.name.startswith(block + ".")]
    if not idx or idx[0] == 0:
        raise ValueError(f"{block}: not found in the trace")
    before = layers[idx[0] - 1]
    stats = next((b for b in trace.blocks if b.name == block), None)
    if stats is None:
        raise ValueError(f"{block}: the trace has no residual numbers for it")
    out_ch = blk.conv3.out_channels if isinstance(blk, Bottleneck) else blk.conv2.out_channels
    stride = blk.conv2.stride[0] if isinstance(blk, Bottleneck) else blk.conv1.stride[0]
    return Walkthrough(
        block=block,
        kind=type(blk).__name__,
        input_from=before.name,
        steps=_steps(model, blk, block, before, [layers[i] for i in idx]),
        shortcut="projection" if blk.downsample is not None else "identity",
        in_channels=blk.conv1.in_channels,
        out_channels=out_ch,
        stride=stride,
        block_params=_params(blk),
        shortcut_params=_params(blk.downsample) if blk.downsample is not None else 0,
        residual_norm=stats.residual_norm,
        shortcut_norm=stats.shortcut_norm,
        cosine=stats.cosine,
        later_reduce=_later_reduce(model, block),
        stage_projections=_projections(model),
    )


def _steps(model: nn.Module, blk: nn.Module, block: str, before, rows: list) -> list[Step]:
    """One :class:`Step` per traced op of the block, each with the shape it reads and writes."""
    roles = ROLES_BOTTLENECK if isinstance(blk, Bottleneck) else ROLES_BASIC
    steps: list[Step] = []
    prev_out, f_shape = before.shape, None
    for r in rows:
        local = r.name[len(block) + 1:]
        mod = _module(model, r.name) if r.type in ("conv", "bn") else None
        if local == "downsample.0":
            in_shape = before.shape  # the projection reads the block's input
        elif r.type == "add":
            in_shape = f_shape or prev_out
        else:
            in_shape = prev_out
        what, macs = _op(r, mod)
        role = roles.get(local, "")
        if local == "conv3" and isinstance(mod, nn.Conv2d):
            role = f"1x1 expand to {mod.out_channels} channels"
        steps.append(Step(name=r.name, what=what, role=role, in_shape=tuple(in_shape), out_shape=tuple(r.shape),
                          params=_params(mod) if mod is not None else 0, macs=macs, l2=r.l2, zero_frac=r.zero_frac))
        if local in ("bn3",) or (isinstance(blk, BasicBlock) and local == "bn2"):
            f_shape = r.shape
        if not local.startswith("downsample"):
            prev_out = r.shape
    return steps


def _op(r, mod: nn.Module | None) -> tuple[str, int]:
    """What a traced op does, in words, and its multiply-accumulates for this input."""
    if r.type == "conv" and isinstance(mod, nn.Conv2d):
        macs = math.prod(r.shape[1:]) * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        return _conv_what(mod), macs
    if r.type == "bn":
        return f"BatchNorm {math.prod(r.shape[1:2])}", math.prod(r.shape[1:])
    if r.type == "add":
        return "add F(x) + shortcut", math.prod(r.shape[1:])
    return ("ReLU" if r.type == "relu" else r.type), math.prod(r.shape[1:])


def _later_reduce(model: nn.Module, block: str) -> tuple[int, int] | None:
    """(in, out) channels of the next block's first 1x1 conv in the same stage, if there is one."""
    stage_name, i_blk = block.split(".")
    stage = getattr(model, stage_name)
    if int(i_blk) + 1 >= len(stage):
        return None
    c1 = stage[int(i_blk) + 1].conv1
    return (c1.in_channels, c1.out_channels)


def _projections(model: nn.Module) -> list[dict]:
    """Every projection shortcut of the model: block, channels in and out, stride."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (Bottleneck, BasicBlock)) and m.downsample is not None:
            d = m.downsample[0]
            out.append({"block": name, "in": d.in_channels, "out": d.out_channels, "stride": d.stride[0]})
    return out


def _module(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None
