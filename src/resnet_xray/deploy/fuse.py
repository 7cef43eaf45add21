"""Fold each BatchNorm into the convolution before it (section 11 of the article).

For a conv ``y = W*x + b`` followed by BatchNorm in eval mode,
``BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta``, so with
``s = gamma / sqrt(var + eps)`` the pair equals one conv with
``W' = W * s`` (per output channel) and ``b' = (b - mean) * s + beta``.
The fused model keeps every module name: each folded BatchNorm becomes an
``nn.Identity``, and the conv gains a bias. :class:`FusedBatchNorm` records the
folded pairs in the model's change list, so a saved fused model reloads as fused.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from ..compare import Tolerance, compare
from ..errors import XrayError
from ..image import bundled_cat, load_batch
from ..interface import class_logits
from ..model import LoadedModel, save_checkpoint
from ..provenance import WeightsInfo
from ..spec import Change, SpecError, register


@dataclass
class FuseOptions:
    # float64 for the scale and shift: folding in float32 loses ~1e-7 relative per layer,
    # which compounds over 53 layers; double keeps the fused model as close as float32 allows.
    compute_dtype: torch.dtype = torch.float64


def _get(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv, bn)`` module names where the BatchNorm reads only that conv's output.

    Found by tracing with ``torch.fx``, so it works for any ResNet-like module tree
    (pruned widths, new heads), not only torchvision's names.
    """
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - an untraceable model is the user's input
        raise XrayError(f"cannot fuse {type(model).__name__}: torch.fx could not trace it ({str(e).splitlines()[0][:150]})") from None
    modules = dict(gm.named_modules())
    pairs: list[tuple[str, str]] = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and isinstance(modules.get(src.target), nn.Conv2d)
            and len(src.users) == 1
        ):
            pairs.append((str(src.target), str(node.target)))
    # A module called twice would be folded twice; refuse rather than compute the wrong thing.
    seen = [n for p in pairs for n in p]
    if len(seen) != len(set(seen)):
        raise XrayError("cannot fuse: a conv or BatchNorm module is called more than once")
    return pairs


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, options: FuseOptions | None = None) -> nn.Conv2d:
    """A new conv (with bias) computing ``bn(conv(x))`` with ``bn`` in eval mode."""
    opts = options or FuseOptions()
    if bn.running_mean is None or bn.running_var is None:
        raise XrayError("cannot fuse a BatchNorm without running statistics (track_running_stats=False)")
    dt = opts.compute_dtype
    w = conv.weight.to(dt)
    b = conv.bias.to(dt) if conv.bias is not None else torch.zeros(conv.out_channels, dtype=dt, device=w.device)
    gamma = bn.weight.to(dt) if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.to(dt) if bn.bias is not None else torch.zeros_like(b)
    scale = gamma / torch.sqrt(bn.running_var.to(dt) + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    fused.weight.copy_((w * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
    fused.bias.copy_(((b - bn.running_mean.to(dt)) * scale + beta).to(conv.weight.dtype))
    return fused


def fused_structure(model: nn.Module, pairs: Iterable[tuple[str, str]]) -> nn.Module:
    """Change ``model`` in place into the fused layout (biased convs, Identity for BN), weights untouched.

    Used to rebuild a saved fused checkpoint before loading its state_dict.
    """
    for conv_name, bn_name in pairs:
        conv = _get(model, conv_name)
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype, device=conv.weight.device))
        _set(model, bn_name, nn.Identity())
    return model


def fuse_model(model: nn.Module, options: FuseOptions | None = None) -> nn.Module:
    """A fused copy of ``model`` (in eval mode); the original is left untouched.

    Returns:
        The copy, with every conv->BatchNorm pair folded into one conv. Its
        ``fused_pairs`` attribute lists the ``(conv, bn)`` names that were folded.
    """
    fused = copy.deepcopy(model).eval()
    pairs = conv_bn_pairs(fused)
    for conv_name, bn_name in pairs:
        conv, bn = _get(fused, conv_name), _get(fused, bn_name)
        _set(fused, conv_name, fold_conv_bn(conv, bn, options))
        _set(fused, bn_name, nn.Identity())
    fused.fused_pairs = pairs  # type: ignore[attr-defined]
    return fused


def count_batchnorm(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


@register
@dataclass(frozen=True)
class FusedBatchNorm(Change):
    """Each ``(conv, bn)`` pair was folded into one biased conv; the BatchNorm became ``Identity``."""

    kind = "fused_batchnorm"
    pairs: list[list[str]]  # [[conv name, bn name], ...]

    def check(self) -> None:
        if not isinstance(self.pairs, list | tuple) or not all(
            isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(n, str) and n for n in p) for p in self.pairs
        ):
            raise SpecError("pairs must be a list of [conv name, bn name] pairs of strings")

    @classmethod
    def of(cls, fused: nn.Module) -> FusedBatchNorm:
        return cls([list(p) for p in fused.fused_pairs])

    def apply(self, model: nn.Module) -> nn.Module:
        names = dict(model.named_modules())
        for conv, bn in self.pairs:
            if not isinstance(names.get(conv), nn.Conv2d) or not isinstance(names.get(bn), nn.BatchNorm2d):
                raise SpecError(f"pair [{conv!r}, {bn!r}] does not name a conv and a BatchNorm of this model")
        model = fused_structure(model, [tuple(p) for p in self.pairs])
        model.fused_pairs = [tuple(p) for p in self.pairs]  # type: ignore[attr-defined]
        return model

    def describe(self) -> str:
        return f"fused_batchnorm({len(self.pairs)} pairs)"

    @classmethod
    def infer(cls, model: nn.Module, reference: nn.Module) -> Change | None:
        return cls.of(model) if getattr(model, "fused_pairs", None) else None


@torch.inference_mode()
def fusion_report(model: nn.Module, fused: nn.Module, images: torch.Tensor, tolerance: Tolerance | None = None) -> dict[str, Any]:
    """The check the ``fuse`` command prints: fused vs unfused logits on a batch of real images.

    ``report["check"]`` is the :class:`~resnet_xray.compare.Equivalence` (as a dict) and
    ``report["passed"]`` its verdict: a model whose outputs are NaN never passes.
    """
    model.eval()
    fused.eval()
    eq = compare(lambda x: class_logits(model(x)), lambda x: class_logits(fused(x)), images, tolerance, names=("unfused", "fused"))
    report: dict[str, Any] = {k: getattr(eq, k) for k in ("max_abs_diff", "mean_abs_diff", "max_abs_logit", "top1_agreement", "images")}
    report["batchnorm_before"] = count_batchnorm(model)
    report["batchnorm_after"] = count_batchnorm(fused)
    report["folded"] = len(getattr(fused, "fused_pairs", []))
    report["passed"] = eq.passed
    report["check"] = eq
    return report


@dataclass
class FuseResult:
    """BatchNorm folded into the convs before it, and the fused vs unfused check on real images."""

    model: LoadedModel  # the fused model, metadata carried over
    folded: int
    batchnorm_before: int
    batchnorm_after: int
    check: dict[str, Any]  # max_abs_diff, mean_abs_diff, max_abs_logit, top1_agreement, images
    weights: WeightsInfo
    output: Path | None = None  # the saved checkpoint, when one was asked for
    skipped: list[Any] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.check.get("passed"))

    def to_dict(self) -> dict[str, Any]:
        return {**self.check, "batchnorm_before": self.batchnorm_before, "batchnorm_after": self.batchnorm_after,
                "folded": self.folded, "output": None if self.output is None else str(self.output),
                "weights": self.weights.to_dict()}


def fuse_checked(m: LoadedModel, out: Path | None, check: Sequence[str | os.PathLike], options: FuseOptions | None = None) -> FuseResult:
    """Fold ``m``, compare with the unfused model on the bundled photo plus ``check``; save to ``out`` only if it passes."""
    fused = fuse_model(m.module, options)
    _, x, skipped = load_batch([bundled_cat(), *check], m.meta.preprocessing)
    rep = fusion_report(m.module, fused, x)
    eq = rep.pop("check")
    rep["check"] = eq.to_dict()
    fused_meta = m.meta.with_change(FusedBatchNorm.of(fused))  # the change list says BN was folded
    saved = save_checkpoint(out, fused, fused_meta) if out is not None and eq.passed else None  # a failed check writes nothing
    counts = {k: rep.pop(k) for k in ("folded", "batchnorm_before", "batchnorm_after")}
    return FuseResult(LoadedModel(fused, fused_meta), check=rep, weights=m.weights, output=saved, skipped=skipped, **counts)
