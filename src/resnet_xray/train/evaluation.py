"""Score a model on a validation loader: loss, accuracy, per-class accuracy, confusion matrix, box quality."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import XrayError
from ..interface import class_logits
from . import distributed as D
from .data import unpack_batch
from .heads import box_metrics
from .metrics import per_class_accuracy
from .precision import Precision


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    *,
    device: str | torch.device = "cpu",
    precision: Precision | None = None,
    channels_last: bool = False,
    ctx: D.DistContext | None = None,
    flip: bool = False,
) -> dict[str, Any]:
    """Loss (plain cross-entropy), accuracy, per-class accuracy and confusion matrix on ``loader``.

    ``flip`` scores the mean of the logits of each image and its mirror image (test-time
    augmentation; box heads are read from the unflipped image).

    Multi-task models also get ``box_iou`` (mean IoU) and ``box_l1`` (mean absolute
    coordinate error, in image fractions). Under DDP every number is summed over ranks.

    Returns:
        ``{"accuracy", "loss", "images", "per_class_accuracy", "confusion", ...}``.
    """
    device = torch.device(device)
    ctx = ctx or D.DistContext()
    precision = precision or Precision(None, False)
    was_training = model.training
    model.eval()
    confusion, sums = _tally(model, loader, device, precision, channels_last, flip)
    if was_training:
        model.train()
    if confusion is None:
        raise XrayError("no readable validation images: every file in the val split was skipped")
    return _summary(confusion, sums, ctx, device)


def _tally(model: nn.Module, loader, device: torch.device, precision: Precision, channels_last: bool,
           flip: bool) -> tuple[torch.Tensor | None, list[float]]:
    """This rank's confusion matrix (None without a batch) and sums ``[loss, box IoU, box L1, images, boxed images]``."""
    confusion = None
    loss_sum = iou_sum = l1_sum = 0.0
    n = n_box = 0
    for batch in loader:
        x, y, box = unpack_batch(batch, device, channels_last)
        with precision.autocast(device):
            out = model(x)
            logits = class_logits(out).float()
            if flip:
                logits = (logits + class_logits(model(torch.flip(x, dims=[3]))).float()) / 2
        if confusion is None:
            confusion = torch.zeros(logits.shape[1], logits.shape[1], dtype=torch.int64, device=device)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        pred = logits.argmax(dim=1)
        confusion += torch.bincount(y * logits.shape[1] + pred, minlength=logits.shape[1] ** 2).view_as(confusion)
        n += len(y)
        if box is not None and isinstance(out, dict) and "box" in out:
            m = box_metrics(out["box"], box)
            iou_sum += float(m["iou_sum"])
            l1_sum += float(m["l1_sum"])
            n_box += len(y)
    return confusion, [loss_sum, iou_sum, l1_sum, n, n_box]


def _summary(confusion: torch.Tensor, sums: list[float], ctx: D.DistContext, device: torch.device) -> dict[str, Any]:
    """The tallies summed over ranks, as :func:`evaluate`'s result."""
    if ctx.enabled:
        import torch.distributed as dist

        dist.all_reduce(confusion, op=dist.ReduceOp.SUM)
    loss_sum, iou_sum, l1_sum, n, n_box = D.all_reduce_sum(sums, ctx, device)
    cm = confusion.cpu()
    result: dict[str, Any] = {
        "accuracy": float(cm.diagonal().sum()) / max(1, n),
        "loss": loss_sum / max(1, n),
        "images": int(n),
        "per_class_accuracy": per_class_accuracy(cm),
        "confusion": cm,
    }
    if n_box:
        result["box_iou"] = iou_sum / n_box
        result["box_l1"] = l1_sum / n_box
    return result
