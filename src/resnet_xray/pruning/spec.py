"""The pruned architecture as plain data: channel counts per conv, BatchNorm and fc layer.

A pruned ResNet differs from torchvision's only in its widths, so a checkpoint can
carry a small JSON-able spec instead of pickled modules. :func:`apply_pruned_spec`
rebuilds the exact pruned model from a fresh torchvision ResNet of the same arch;
``resnet_xray.model.load_model`` calls it before loading the state_dict, which keeps
every checkpoint loadable with ``torch.load(weights_only=True)``.

:class:`PrunedWidths` is the typed change record (see :mod:`resnet_xray.spec`) that
carries the spec in a model's metadata and checkpoints.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import XrayError
from ..spec import Change, SpecError, register

SPEC_FORMAT = "resnet-xray-pruned-spec"
SPEC_VERSION = 1


def pruned_spec(model: nn.Module, **info: Any) -> dict[str, Any]:
    """Describe the widths of every conv, BatchNorm and fc layer of ``model``.

    Args:
        model: a (possibly pruned) torchvision ResNet.
        **info: JSON-able provenance stored beside the widths (criterion, MACs kept, ...).

    Returns:
        A dict of ints and strings only, safe for ``torch.load(weights_only=True)``.
    """
    layers: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            layers[name] = {"kind": "conv", "in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.BatchNorm2d):
            layers[name] = {"kind": "bn", "num_features": m.num_features}
        elif isinstance(m, nn.Linear):
            layers[name] = {"kind": "fc", "in_features": m.in_features, "out_features": m.out_features}
    return {"format": SPEC_FORMAT, "version": SPEC_VERSION, "layers": layers, "info": dict(info)}


def apply_pruned_spec(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Resize the layers of a fresh torchvision ResNet to the widths recorded in ``spec``.

    Layers are replaced in place (new, uninitialised weights of the pruned shape);
    the caller loads the pruned state_dict afterwards with strict shape checks.

    Args:
        model: a freshly built ResNet of the arch the spec was taken from.
        spec: the dict written by :func:`pruned_spec`.

    Returns:
        ``model``, now with the pruned widths.
    """
    layers = _check_spec(spec)
    modules = dict(model.named_modules())
    for name, want in layers.items():
        old = modules.get(name)
        if old is None:
            raise XrayError(f"pruned_spec names layer {name!r}, which {type(model).__name__} does not have")
        new = _resized(name, old, want)
        if new is not old:
            _set_submodule(model, name, new)
    if not any(p.is_meta for p in model.parameters()):
        # A replay on the meta device (save_checkpoint's check) compares shapes with a model
        # that runs already; a real load runs this check, which costs a copy and a forward.
        _check_runs(model)
    return model


def _check_spec(spec: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise XrayError("pruned_spec is not a resnet-xray pruned-model spec")
    if spec.get("version") != SPEC_VERSION:
        raise XrayError(f"pruned_spec version {spec.get('version')!r} is not supported (this release reads {SPEC_VERSION})")
    layers = spec.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise XrayError("pruned_spec has no layers")
    return layers


def _resized(name: str, old: nn.Module, want: dict[str, Any]) -> nn.Module:
    kind = want.get("kind")
    try:
        if kind == "conv" and isinstance(old, nn.Conv2d):
            cin, cout, groups = int(want["in_channels"]), int(want["out_channels"]), int(want.get("groups", old.groups))
            if (cin, cout, groups) == (old.in_channels, old.out_channels, old.groups):
                return old
            return nn.Conv2d(
                cin, cout, old.kernel_size, stride=old.stride, padding=old.padding, dilation=old.dilation,
                groups=groups, bias=old.bias is not None, padding_mode=old.padding_mode,
            )
        if kind == "bn" and isinstance(old, nn.BatchNorm2d):
            n = int(want["num_features"])
            if n == old.num_features:
                return old
            return nn.BatchNorm2d(n, eps=old.eps, momentum=old.momentum, affine=old.affine, track_running_stats=old.track_running_stats)
        if kind == "fc" and isinstance(old, nn.Linear):
            fin, fout = int(want["in_features"]), int(want["out_features"])
            if fout != old.out_features:
                # Pruning never touches the classifier's outputs; a mismatch means a foreign spec.
                raise XrayError(f"pruned_spec gives {name} {fout} outputs but the checkpoint's classifier has {old.out_features}")
            if fin == old.in_features:
                return old
            return nn.Linear(fin, fout, bias=old.bias is not None)
    except (KeyError, TypeError, ValueError) as e:
        raise XrayError(f"pruned_spec entry for {name!r} is malformed ({e})") from None
    raise XrayError(f"pruned_spec says {name!r} is a {kind!r} layer but the model has a {type(old).__name__} there")


@register
@dataclass(frozen=True)
class PrunedWidths(Change):
    """Channel counts of every conv, BatchNorm and fc layer after structured pruning."""

    kind = "pruned_widths"
    layers: dict[str, dict[str, Any]]  # {module name: {"kind": "conv"|"bn"|"fc", widths...}}
    info: dict[str, Any] = field(default_factory=dict)  # provenance: round, criterion, MACs kept
    # {BatchNorm name: indices of the unpruned arch's channels it keeps} (pruning.kept); {}: not recorded
    kept: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, model: nn.Module, kept: dict[str, list[int]] | None = None, **info: Any) -> PrunedWidths:
        spec = pruned_spec(model, **info)
        return cls(spec["layers"], spec["info"], dict(kept or {}))

    @classmethod
    def from_spec(cls, spec: Any) -> PrunedWidths:
        """From the legacy ``pruned_spec`` dict of format-1 checkpoints."""
        try:
            layers = _check_spec(spec)
        except XrayError as e:
            raise SpecError(str(e)) from None
        return cls.from_data({"layers": layers, "info": spec.get("info") or {}})

    def as_spec(self) -> dict[str, Any]:
        return {"format": SPEC_FORMAT, "version": SPEC_VERSION, "layers": self.layers, "info": self.info}

    def check(self) -> None:
        if not isinstance(self.layers, dict) or not self.layers:
            raise SpecError("layers must be a non-empty dict of {name: widths}")
        if not isinstance(self.info, dict):
            raise SpecError("info must be a dict")
        wanted = {"conv": ("in_channels", "out_channels"), "bn": ("num_features",), "fc": ("in_features", "out_features")}
        for name, w in self.layers.items():
            if not isinstance(name, str) or not isinstance(w, dict) or w.get("kind") not in wanted:
                raise SpecError(f"layers[{name!r}] must be a dict with kind conv, bn or fc")
            for k in wanted[w["kind"]] + (("groups",) if "groups" in w else ()):
                if type(w.get(k)) is not int or w[k] < 1:
                    raise SpecError(f"layers[{name!r}].{k} must be an int >= 1, found {w.get(k)!r}")
        self._check_kept()

    def _check_kept(self) -> None:
        if not isinstance(self.kept, dict):
            raise SpecError("kept must be a dict of {BatchNorm name: channel indices}")
        for name, idx in self.kept.items():
            w = self.layers.get(name)
            if not isinstance(w, dict) or w.get("kind") != "bn":
                raise SpecError(f"kept[{name!r}] names no BatchNorm of layers")
            ok = isinstance(idx, list) and len(idx) == w["num_features"] and all(type(i) is int for i in idx)
            if not ok or idx[0] < 0 or any(a >= b for a, b in zip(idx, idx[1:])):
                raise SpecError(f"kept[{name!r}] must be {w['num_features']} increasing channel indices >= 0")

    def apply(self, model: nn.Module) -> nn.Module:
        return apply_pruned_spec(model, self.as_spec())

    def describe(self) -> str:
        kept = self.info.get("macs"), self.info.get("baseline_macs")
        return f"pruned_widths({kept[0] / kept[1]:.0%} MACs)" if all(isinstance(v, int | float) and v for v in kept) else "pruned_widths"

    @classmethod
    def infer(cls, model: nn.Module, reference: nn.Module) -> Change | None:
        body = getattr(model, "backbone", model)
        ref = {k: v for k, v in pruned_spec(reference)["layers"].items() if v["kind"] != "fc"}
        mine = {k: v for k, v in pruned_spec(body)["layers"].items() if v["kind"] != "fc"}
        if mine == ref:
            return None
        layers = pruned_spec(body)["layers"]
        if "fc" not in layers:  # heads replaced fc; the replay resizes fc before the heads read its width
            last = [m for m in body.modules() if isinstance(m, nn.BatchNorm2d | nn.Conv2d)][-1]
            width = last.num_features if isinstance(last, nn.BatchNorm2d) else last.out_channels
            layers["fc"] = {"kind": "fc", "in_features": width, "out_features": reference.fc.out_features}
        return cls(layers)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _check_runs(model: nn.Module) -> None:
    """A forward on the meta device catches a spec whose widths do not chain up."""
    probe = copy.deepcopy(model).to("meta").eval()
    try:
        with torch.no_grad():
            probe(torch.empty(1, 3, 64, 64, device="meta"))
    except RuntimeError as e:
        raise XrayError(f"pruned_spec describes widths that do not fit together ({str(e).splitlines()[0][:160]})") from None


def stage_channels(model: nn.Module) -> dict[str, list[list[int]]]:
    """Output widths of every conv, block by block and stage by stage: where the net was thinned.

    Returns ``{"conv1": [[64]], "conv2_x": [[64, 64, 256, 256], [64, 64, 256], ...], ...}`` for a
    ResNet-50: each inner list is one block's convs in order (the projection shortcut last).
    """
    out: dict[str, list[list[int]]] = {"conv1": [[model.conv1.out_channels]]}
    for i in range(1, 5):
        layer = getattr(model, f"layer{i}", None)
        if layer is None:
            continue
        out[f"conv{i + 1}_x"] = [
            [m.out_channels for m in block.modules() if isinstance(m, nn.Conv2d)] for block in layer.children()
        ]
    return out
