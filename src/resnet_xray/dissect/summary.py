"""From the layer table to the summaries a reader wants: Table 1 of He et al., totals, breakdowns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .layers import LayerRow

STAGES = ("conv1", "conv2_x", "conv3_x", "conv4_x", "conv5_x", "pool_fc")
BREAKDOWN_TYPES = ("conv", "bn", "relu", "maxpool", "avgpool", "add", "fc")


@dataclass
class StageRow:
    name: str
    output_size: int  # spatial side of the stage's output (1 for pool_fc)
    blocks: int  # residual blocks in the stage (0 for conv1 and pool_fc)
    channels: list[int]  # per-block conv widths, e.g. [64, 64, 256] for a bottleneck
    layers: str  # the stage in Table 1's notation
    params: int
    macs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Totals:
    params: int
    macs: int  # multiply-accumulates of conv + fc: the convention of torchvision's _ops and He et al.
    flops: int  # 2 x macs: a multiply-add counted as two floating-point operations
    elementwise_ops: int  # bn, relu, add and pooling element operations, not in macs
    conv_modules: int  # every Conv2d, projection shortcuts included
    main_path_convs: int  # convs on the main path: the "49" of "49 conv + 1 fc = 50 layers"
    shortcut_convs: int
    fc_layers: int
    weighted_layers: int  # main-path convs + fc: the depth in the model's name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Share:
    params: int = 0
    macs: int = 0
    params_share: float = 0.0
    macs_share: float = 0.0  # share of every counted operation (MACs plus element ops)


@dataclass
class Breakdown:
    by_type: dict[str, Share] = field(default_factory=dict)
    by_stage: dict[str, Share] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "by_type": {k: asdict(v) for k, v in self.by_type.items()},
            "by_stage": {k: asdict(v) for k, v in self.by_stage.items()},
        }


def _block_channels(block: nn.Module) -> list[int]:
    return [m.out_channels for n, m in block.named_children() if isinstance(m, nn.Conv2d)]


def _block_kernels(block: nn.Module) -> list[str]:
    return [f"{m.kernel_size[0]}x{m.kernel_size[1]}" for _, m in block.named_children() if isinstance(m, nn.Conv2d)]


def stage_table(model: nn.Module, rows: list[LayerRow]) -> list[StageRow]:
    out: list[StageRow] = []
    for stage in STAGES:
        srows = [r for r in rows if r.stage == stage]
        if not srows:
            continue
        last = srows[-1].output_shape
        size = last[-1] if len(last) == 3 else 1
        params = sum(r.params for r in srows)
        macs = sum(r.macs for r in srows)
        if stage == "conv1":
            conv = next(r for r in srows if r.type == "conv")
            layers = f"{conv.kernel[0]}x{conv.kernel[1]}, {conv.out_channels}, stride {conv.stride[0]}"
            out.append(StageRow(stage, size, 0, [conv.out_channels], layers, params, macs))
        elif stage == "pool_fc":
            fc = next((r for r in srows if r.type == "fc"), None)
            layers = f"average pool, {fc.out_channels}-d fc, softmax" if fc else "average pool"
            out.append(StageRow(stage, size, 0, [fc.out_channels] if fc else [], layers, params, macs))
        else:
            layer = getattr(model, f"layer{int(stage[4]) - 1}")
            blocks = list(layer.children())
            chans = _block_channels(blocks[0])
            kern = _block_kernels(blocks[0])
            inner = "; ".join(f"{k}, {c}" for k, c in zip(kern, chans))
            layers = f"[{inner}] x {len(blocks)}"
            if stage == "conv2_x":
                mp = next((r for r in srows if r.type == "maxpool"), None)
                if mp:
                    layers = f"{mp.kernel[0]}x{mp.kernel[1]} max pool, stride {mp.stride[0]}; " + layers
            out.append(StageRow(stage, size, len(blocks), chans, layers, params, macs))
    return out


def totals(model: nn.Module, rows: list[LayerRow]) -> Totals:
    convs = [r for r in rows if r.type == "conv"]
    fcs = [r for r in rows if r.type == "fc"]
    main = [r for r in convs if not r.shortcut]
    macs = sum(r.macs for r in convs + fcs)
    return Totals(
        params=sum(p.numel() for p in model.parameters()),
        macs=macs,
        flops=2 * macs,
        elementwise_ops=sum(r.macs for r in rows if r.type not in ("conv", "fc")),
        conv_modules=sum(1 for m in model.modules() if isinstance(m, nn.Conv2d)),
        main_path_convs=len(main),
        shortcut_convs=len(convs) - len(main),
        fc_layers=len(fcs),
        weighted_layers=len(main) + len(fcs),
    )


def breakdown(model: nn.Module, rows: list[LayerRow]) -> Breakdown:
    total_params = sum(p.numel() for p in model.parameters()) or 1
    total_ops = sum(r.macs for r in rows) or 1

    def share(selected: list[LayerRow]) -> Share:
        p = sum(r.params for r in selected)
        m = sum(r.macs for r in selected)
        return Share(p, m, p / total_params, m / total_ops)

    return Breakdown(
        by_type={t: share([r for r in rows if r.type == t]) for t in BREAKDOWN_TYPES},
        by_stage={s: share([r for r in rows if r.stage == s]) for s in STAGES},
    )
