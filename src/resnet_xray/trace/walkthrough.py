"""The first block of stage 1, step by step on a real input: shapes, costs and what each step does.

Every shape, parameter count and norm below is read from the model and the
input in hand; the text around them only says what the step is for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck


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
    zero_frac: float  # fraction of exact zeros in the output

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
                f"{s.name:<24} {s.what:<34} {_shape(s.out_shape):<18} {s.params:>9,} {s.macs:>12,} {s.l2:>10.2f} {s.zero_frac:>6.1%}"
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


def _stem(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.maxpool(model.relu(model.bn1(model.conv1(x))))


@torch.no_grad()
def walkthrough(model: nn.Module, x: torch.Tensor, block: str = "layer1.0") -> Walkthrough:
    """Run the stem, then ``block`` one operation at a time, recording each step.

    Args:
        model: a torchvision ResNet.
        x: the preprocessed image, 1x3xHxW (or CHW).
        block: which block to walk through; the first block of stage 1 by default.

    Returns:
        A :class:`Walkthrough`; ``.text()`` prints it, ``.to_dict()`` serialises it.
    """
    if x.dim() == 3:
        x = x.unsqueeze(0)
    blk = model.get_submodule(block)
    if not isinstance(blk, (Bottleneck, BasicBlock)):
        raise ValueError(f"{block} is a {type(blk).__name__}, not a torchvision residual block")
    # Run the model up to the block's input, so the walkthrough sees what the block sees.
    stage_name, idx = block.split(".")
    h = _stem(model, x)
    input_from = "maxpool"
    for s in ("layer1", "layer2", "layer3", "layer4"):
        stage = getattr(model, s)
        for i, b in enumerate(stage):
            if s == stage_name and i == int(idx):
                break
            h = b(h)
            input_from = f"{s}.{i}.relu_2" if isinstance(b, Bottleneck) else f"{s}.{i}.relu_1"
        else:
            continue
        break

    steps: list[Step] = []

    def record(name: str, what: str, role: str, inp: torch.Tensor, out: torch.Tensor, mod: nn.Module | None, macs: int) -> torch.Tensor:
        steps.append(
            Step(
                name=f"{block}.{name}",
                what=what,
                role=role,
                in_shape=tuple(inp.shape),
                out_shape=tuple(out.shape),
                params=_params(mod) if mod is not None else 0,
                macs=macs,
                l2=float(out.norm()),
                zero_frac=float((out == 0).float().mean()),
            )
        )
        return out

    def conv(name: str, c: nn.Conv2d, inp: torch.Tensor, role: str) -> torch.Tensor:
        out = c(inp)
        macs = out[0].numel() * (c.in_channels // c.groups) * c.kernel_size[0] * c.kernel_size[1]
        return record(name, _conv_what(c), role, inp, out, c, macs)

    def bn(name: str, m: nn.BatchNorm2d, inp: torch.Tensor, role: str) -> torch.Tensor:
        return record(name, f"BatchNorm {m.num_features}", role, inp, m(inp), m, inp[0].numel())

    def relu(name: str, inp: torch.Tensor, role: str) -> torch.Tensor:
        return record(name, "ReLU", role, inp, torch.relu(inp), None, inp[0].numel())

    xin = h
    if isinstance(blk, Bottleneck):
        o = conv("conv1", blk.conv1, xin, "1x1 reduce: mixes channels, no spatial context")
        o = bn("bn1", blk.bn1, o, "normalise each channel")
        o = relu("relu", o, "first of the block's three ReLU calls")
        o = conv("conv2", blk.conv2, o, "3x3 spatial: the only layer here that looks at neighbours")
        o = bn("bn2", blk.bn2, o, "normalise each channel")
        o = relu("relu_1", o, "second ReLU call (the same module object in torchvision)")
        o = conv("conv3", blk.conv3, o, f"1x1 expand to {blk.conv3.out_channels} channels")
        f = bn("bn3", blk.bn3, o, "F(x): the residual branch's output")
    else:
        o = conv("conv1", blk.conv1, xin, "3x3 spatial")
        o = bn("bn1", blk.bn1, o, "normalise each channel")
        o = relu("relu", o, "first ReLU call")
        o = conv("conv2", blk.conv2, o, "3x3 spatial")
        f = bn("bn2", blk.bn2, o, "F(x): the residual branch's output")
    if blk.downsample is not None:
        pc, pb = blk.downsample[0], blk.downsample[1]
        p = conv("downsample.0", pc, xin, "projection shortcut (option B): match channels and stride")
        sc = bn("downsample.1", pb, p, "BatchNorm on the projection, like F(x)'s last step")
        shortcut = "projection"
        shortcut_params = _params(blk.downsample)
    else:
        sc, shortcut, shortcut_params = xin, "identity", 0
    y = record("add", "add F(x) + shortcut", "the residual add", f, f + sc, None, f[0].numel())
    last = "relu_2" if isinstance(blk, Bottleneck) else "relu_1"
    record(last, "ReLU", "after the add: the block's output", y, torch.relu(y), None, y[0].numel())

    # What the next block of the stage reduces from, to contrast with this one.
    stage = getattr(model, stage_name)
    later = None
    if int(idx) + 1 < len(stage):
        c1 = stage[int(idx) + 1].conv1
        later = (c1.in_channels, c1.out_channels)
    projections = []
    for name, m in model.named_modules():
        if isinstance(m, (Bottleneck, BasicBlock)) and m.downsample is not None:
            d = m.downsample[0]
            projections.append({"block": name, "in": d.in_channels, "out": d.out_channels, "stride": d.stride[0]})

    fn, sn = float(f.norm()), float(sc.norm())
    cos = float((f * sc).sum()) / (fn * sn) if fn > 0 and sn > 0 else math.nan
    out_ch = blk.conv3.out_channels if isinstance(blk, Bottleneck) else blk.conv2.out_channels
    stride = blk.conv2.stride[0] if isinstance(blk, Bottleneck) else blk.conv1.stride[0]
    return Walkthrough(
        block=block,
        kind=type(blk).__name__,
        input_from=input_from,
        steps=steps,
        shortcut=shortcut,
        in_channels=blk.conv1.in_channels,
        out_channels=out_ch,
        stride=stride,
        block_params=_params(blk),
        shortcut_params=shortcut_params,
        residual_norm=fn,
        shortcut_norm=sn,
        cosine=cos,
        later_reduce=later,
        stage_projections=projections,
    )
