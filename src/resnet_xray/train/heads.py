"""A shared ResNet backbone with any number of named heads (the article's ``MultiTaskResNet``).

The backbone is the torchvision model with ``fc`` replaced by identity, so its output is
the pooled feature vector (2048-d for ResNet-50). Each head is a small module on that
vector; ``forward`` returns ``{name: output}``. A head spec is plain data (str/int), so it
travels inside checkpoints that load with ``weights_only=True``, as a :class:`Heads`
change record (see :mod:`resnet_xray.spec`).
"""

from __future__ import annotations

import keyword
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.ops import box_iou, generalized_box_iou_loss

from ..errors import XrayError
from ..interface import forward_features, num_features
from ..spec import Change, SpecError, register

HEAD_KINDS = ("linear", "box")


def normalize_spec(heads_spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"class": 10, "box": {"kind": "box"}}`` -> ``{name: {"kind", "out", "hidden"}}``.

    An int means a linear head with that many outputs. A ``box`` head predicts
    ``(x0, y0, x1, y1)`` as fractions of the image through a hidden layer and a sigmoid.
    """
    if not heads_spec:
        raise XrayError("a multi-task model needs at least one head")
    out: dict[str, dict[str, Any]] = {}
    for name, spec in heads_spec.items():
        if isinstance(spec, int):
            spec = {"kind": "linear", "out": spec}
        spec = dict(spec)
        kind = spec.get("kind", "linear")
        if kind not in HEAD_KINDS:
            raise XrayError(f"head {name!r}: kind {kind!r} is not one of {', '.join(HEAD_KINDS)}")
        default_out = 4 if kind == "box" else None
        n_out = int(spec.get("out", default_out or 0))
        if n_out < 1:
            raise XrayError(f"head {name!r}: needs 'out' (number of outputs) >= 1")
        hidden = int(spec.get("hidden", 256 if kind == "box" else 0))
        out[str(name)] = {"kind": kind, "out": n_out, "hidden": hidden}
    return out


class BoxHead(nn.Module):
    """Pooled features -> hidden -> ReLU -> 4 values -> sigmoid, reordered into a valid box."""

    def __init__(self, in_features: int, hidden: int, out: int = 4) -> None:
        super().__init__()
        if out != 4:
            raise XrayError(f"a box head has 4 outputs (x0, y0, x1, y1), not {out}")
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 4))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        # Predict centre and size so every output is a well-formed box inside the image.
        c = self.mlp(feats).float().sigmoid()
        cx, cy, w, h = c.unbind(-1)
        x0, x1 = (cx - w / 2).clamp(0, 1), (cx + w / 2).clamp(0, 1)
        y0, y1 = (cy - h / 2).clamp(0, 1), (cy + h / 2).clamp(0, 1)
        return torch.stack([x0, y0, x1, y1], dim=-1)


def _make_head(spec: dict[str, Any], in_features: int) -> nn.Module:
    if spec["kind"] == "box":
        return BoxHead(in_features, spec["hidden"] or 256, spec["out"])
    if spec["hidden"]:
        return nn.Sequential(nn.Linear(in_features, spec["hidden"]), nn.ReLU(inplace=True), nn.Linear(spec["hidden"], spec["out"]))
    return nn.Linear(in_features, spec["out"])


class HeadDict(nn.ModuleDict):
    """Heads by task name. A name that is a Python keyword (``class``) is stored as ``class_``:
    torch.fx writes module paths as attribute access, and ``self.heads.class`` does not parse."""

    @staticmethod
    def key(name: str) -> str:
        return f"{name}_" if keyword.iskeyword(name) else name

    def __getitem__(self, name: str) -> nn.Module:
        return super().__getitem__(self.key(name))

    def __setitem__(self, name: str, module: nn.Module) -> None:
        super().__setitem__(self.key(name), module)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(self.key(name))


class MultiTaskResNet(nn.Module):
    """One backbone, several heads; ``forward(x) -> {head name: output}``."""

    def __init__(self, backbone: nn.Module, heads: Mapping[str, nn.Module], spec: dict[str, dict[str, Any]]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = HeadDict(dict(heads))
        self.heads_spec = spec

    @property
    def num_features(self) -> int:
        return _in_features(next(iter(self.heads.values())))

    # The uniform model interface (resnet_xray.interface), as timm models have it.
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return forward_features(self.backbone, x)

    def forward_head(self, features: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        feats = torch.flatten(self.backbone.avgpool(features), 1)
        return feats if pre_logits else {name: self.heads[name](feats) for name in self.heads_spec}

    def get_classifier(self) -> nn.Module:
        if "class" not in self.heads:
            raise XrayError(f"this multi-task model has no 'class' head (heads: {', '.join(self.heads_spec)})")
        return self.heads["class"]

    def reset_classifier(self, num_classes: int) -> None:
        self.heads["class"] = nn.Linear(self.num_features, num_classes)
        self.heads_spec["class"] = {"kind": "linear", "out": num_classes, "hidden": 0}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        return {name: self.heads[name](feats) for name in self.heads_spec}


def _in_features(head: nn.Module) -> int:
    return next(m for m in head.modules() if isinstance(m, nn.Linear)).in_features


def attach_heads(model: nn.Module, heads_spec: Mapping[str, Any]) -> MultiTaskResNet:
    """Put named heads on ``model``'s pooled features in place of its ``fc``.

    A ``class`` linear head whose size matches the existing ``fc`` reuses it, so a
    fine-tuned classifier keeps its weights when it gains a box head.

    Args:
        model: a torchvision ResNet (possibly pruned): anything with ``fc: nn.Linear``.
        heads_spec: ``{name: int | {"kind": "linear"|"box", "out": int, "hidden": int}}``.

    Returns:
        A :class:`MultiTaskResNet` whose ``heads_spec`` is the normalised spec.
    """
    if isinstance(model, MultiTaskResNet):
        raise XrayError("model already has heads; attach them to the plain backbone")
    spec = normalize_spec(heads_spec)
    in_features = num_features(model)
    fc = model.fc
    heads: dict[str, nn.Module] = {}
    for name, s in spec.items():
        if name == "class" and s["kind"] == "linear" and not s["hidden"] and fc.out_features == s["out"]:
            heads[name] = fc
        else:
            heads[name] = _make_head(s, in_features)
    model.fc = nn.Identity()
    return MultiTaskResNet(model, heads, spec)


@register
@dataclass(frozen=True)
class Heads(Change):
    """Named heads on the pooled features in place of ``fc`` (a :class:`MultiTaskResNet`)."""

    kind = "heads"
    heads: dict[str, dict[str, Any]]  # {name: {"kind": "linear"|"box", "out": int, "hidden": int}}

    def check(self) -> None:
        if not isinstance(self.heads, dict) or not self.heads:
            raise SpecError(f"heads must be a non-empty dict of {{name: spec}}, found {type(self.heads).__name__}")
        for name, h in self.heads.items():
            if not isinstance(h, dict) or h.get("kind") not in HEAD_KINDS:
                raise SpecError(f"heads[{name!r}] must be a dict with kind {' or '.join(HEAD_KINDS)}")
            for k in ("out", "hidden"):
                if type(h.get(k, 0)) is not int or h.get(k, 0) < (1 if k == "out" else 0):
                    raise SpecError(f"heads[{name!r}].{k} must be a non-negative int, found {h.get(k)!r}")
        try:
            normalize_spec(self.heads)
        except XrayError as e:
            raise SpecError(str(e)) from None

    @classmethod
    def of(cls, model: MultiTaskResNet) -> Heads:
        return cls({k: dict(v) for k, v in model.heads_spec.items()})

    def apply(self, model: nn.Module) -> nn.Module:
        return attach_heads(model, self.heads)

    def upgrade_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Files written before HeadDict keep the 'class' head under heads.class.*
        prefixes = {f"heads.{n}.": f"heads.{HeadDict.key(n)}." for n in self.heads if HeadDict.key(n) != n}
        out = {}
        for k, v in state.items():
            p = next((p for p in prefixes if k.startswith(p)), None)
            out[prefixes[p] + k[len(p):] if p else k] = v
        return out

    def describe(self) -> str:
        return f"heads({', '.join(self.heads)})"

    @classmethod
    def infer(cls, model: nn.Module, reference: nn.Module) -> Change | None:
        return cls.of(model) if isinstance(model, MultiTaskResNet) else None


def multitask_spec(num_classes: int, *, box_hidden: int = 256) -> dict[str, dict[str, Any]]:
    """The article's two heads: classification and a 4-value box."""
    return normalize_spec({"class": num_classes, "box": {"kind": "box", "hidden": box_hidden}})


# --- losses and metrics of the box head ---


def box_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 on the coordinates plus generalised-IoU loss: both in image fractions."""
    pred, target = pred.float(), target.float()
    l1 = nn.functional.smooth_l1_loss(pred, target, beta=0.05)
    giou = generalized_box_iou_loss(pred, target, reduction="mean")
    return l1 + giou


def box_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image IoU and mean absolute coordinate error (sums, for averaging over batches)."""
    pred, target = pred.float(), target.float()
    iou = box_iou(pred, target).diagonal()
    return {"iou_sum": iou.sum(), "l1_sum": (pred - target).abs().mean(dim=1).sum()}
