"""Channel importance: the criteria that decide which channels contribute least.

Each criterion scores whole DepGraph groups (the channels tied together through
residual adds and projection shortcuts), so a score always means "what removing this
channel everywhere it appears would cost". ``taylor`` needs gradients of the loss,
hence data; the others read the weights only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch_pruning as tp
from torch import nn

from ..errors import XrayError

CRITERIA = ("l1", "l2", "bn-scale", "taylor")
NEEDS_DATA = ("taylor",)
DESCRIPTIONS = {
    "l1": "mean L1 norm of the group's weights per channel",
    "l2": "mean L2 norm of the group's weights per channel",
    "bn-scale": "|gamma| of the group's BatchNorm layers (network slimming)",
    "taylor": "|weight x gradient| of the loss, summed over the group (first-order Taylor, Molchanov 2019)",
}


def make_importance(criterion: str) -> tp.importance.Importance:
    """The Torch-Pruning scorer for ``criterion`` (one of :data:`CRITERIA`)."""
    if criterion == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if criterion == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if criterion == "bn-scale":
        return tp.importance.BNScaleImportance()
    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise XrayError(f"--importance {criterion!r}: choose one of {', '.join(CRITERIA)}")


def check_criterion(criterion: str, has_data: bool) -> None:
    if criterion not in CRITERIA:
        raise XrayError(f"--importance {criterion!r}: choose one of {', '.join(CRITERIA)}")
    if criterion in NEEDS_DATA and not has_data:
        raise XrayError(f"--importance {criterion} needs gradients of the loss: pass --data DIR (or choose l1, l2 or bn-scale)")


def accumulate_gradients(model: nn.Module, batches: Iterable[Any], max_batches: int) -> int:
    """Fill ``.grad`` with the summed cross-entropy gradient of up to ``max_batches`` batches.

    The model stays in eval mode so BatchNorm uses its running statistics: the scores
    then describe the network that will be deployed, not one batch's statistics.

    Returns:
        the number of images the gradients were taken over.
    """
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    seen = 0
    try:
        for i, batch in enumerate(batches):
            if i >= max_batches:
                break
            x, y = batch[0], batch[1]
            loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
            loss.backward()
            seen += int(x.shape[0])
    finally:
        model.train(was_training)
    if seen == 0:
        raise XrayError("--importance taylor: the training data yielded no batches to take gradients over")
    return seen


def copy_gradients(src: nn.Module, dst: nn.Module) -> None:
    """Carry ``.grad`` over to a deep copy (``copy.deepcopy`` drops gradients)."""
    dst_params = dict(dst.named_parameters())
    for name, p in src.named_parameters():
        if p.grad is not None and name in dst_params and dst_params[name].shape == p.shape:
            dst_params[name].grad = p.grad.clone()
