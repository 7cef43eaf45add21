"""One interface to every model here, in the manner of timm: features, head, classifier.

``forward_features`` / ``forward_head`` / ``get_classifier`` / ``reset_classifier``
work on any torchvision ResNet (plain or pruned, fused or not) and on models that
define the same methods themselves (the multi-task model in ``train/heads.py``).
``class_logits`` is the one way to get the class logits out of any model's output,
and :class:`ClassLogits` wraps a model so exporters, quantizers and CAM see them alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import XrayError
from .spec import Change, SpecError, register


def forward_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last stage's feature map (N, C, H, W), before pooling."""
    if hasattr(model, "forward_features"):
        return model.forward_features(x)
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def forward_head(model: nn.Module, features: torch.Tensor, *, pre_logits: bool = False) -> Any:
    """Pool ``features`` and apply the classifier (or heads); ``pre_logits`` stops at the pooled vector."""
    if hasattr(model, "forward_head"):
        return model.forward_head(features, pre_logits=pre_logits)
    x = torch.flatten(model.avgpool(features), 1)
    return x if pre_logits else model.fc(x)


def get_classifier(model: nn.Module) -> nn.Module:
    """The layer that produces the class logits (never pruned, replaced on transfer)."""
    if hasattr(model, "get_classifier"):
        return model.get_classifier()
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Linear):
        raise XrayError(f"{type(model).__name__} has no Linear 'fc' classifier")
    return fc


def num_features(model: nn.Module) -> int:
    """Width of the pooled feature vector the classifier reads (2048 for a ResNet-50, less when pruned)."""
    if hasattr(model, "num_features"):
        return int(model.num_features)
    return get_classifier(model).in_features


def num_classes(model: nn.Module) -> int:
    return get_classifier(model).out_features


def reset_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """A fresh ``Linear(num_features, num_classes)`` classifier, in place (the transfer-learning step).

    Returns ``model``; record the change with ``meta.with_change(ReplacedClassifier(num_classes))``.
    """
    if num_classes < 1:
        raise XrayError(f"cannot build a classifier for {num_classes} classes")
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
        return model
    model.fc = nn.Linear(num_features(model), num_classes)
    return model


def class_logits(out: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    """The class logits of any model output: a tensor, or a multi-task dict (its ``class`` head)."""
    return split_outputs(out)[0]


def split_outputs(out: torch.Tensor | dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Class logits, plus any other heads of a multi-task model."""
    if isinstance(out, torch.Tensor):
        return out, {}
    if isinstance(out, dict) and out:
        logits = out.get("class", next(iter(out.values())))
        return logits, {k: v for k, v in out.items() if v is not logits}
    raise TypeError(f"unexpected model output type {type(out).__name__}")


class ClassLogits(nn.Module):
    """``model`` with its class logits alone as output: for ONNX export, INT8, timers and CAM."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return class_logits(self.model(x))


def unwrap(model: nn.Module) -> nn.Module:
    return model.model if isinstance(model, ClassLogits) else model


@register
@dataclass(frozen=True)
class ReplacedClassifier(Change):
    """The classifier was replaced by a fresh one with ``num_classes`` outputs (transfer learning)."""

    kind = "classifier"
    num_classes: int

    def check(self) -> None:
        if type(self.num_classes) is not int or self.num_classes < 1:
            raise SpecError(f"num_classes must be an int >= 1, found {self.num_classes!r}")

    def apply(self, model: nn.Module) -> nn.Module:
        return reset_classifier(model, self.num_classes)

    def describe(self) -> str:
        return f"classifier({self.num_classes})"

    @classmethod
    def infer(cls, model: nn.Module, reference: nn.Module) -> Change | None:
        if hasattr(model, "heads"):  # a multi-task model's class head is recorded with its heads
            return None
        n = num_classes(model)
        return cls(n) if n != num_classes(reference) else None
