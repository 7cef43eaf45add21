"""The structural changes a model has been through: an ordered list of small typed records.

A torchvision ResNet plus this list is the whole architecture of every model the
project writes: a replaced classifier, pruned widths, extra heads, folded BatchNorm.
A checkpoint stores the list as plain data (loadable with ``weights_only=True``);
``load_model`` replays it on a fresh torchvision model before loading the weights.

Each kind of change is a frozen dataclass defined and registered (:func:`register`)
by the package that makes the change. This module only knows *where* each kind
lives (:data:`PROVIDERS`), so reading a checkpoint imports just the packages its
changes need, and nothing here imports a package above it.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from torch import nn

# kind -> the module that defines and registers it. Imported on first use only, so a plain
# checkpoint never pulls in torch_pruning, and model.py needs no import of prune/train/deploy.
PROVIDERS: dict[str, str] = {
    "classifier": "resnet_xray.interface",
    "pruned_widths": "resnet_xray.pruning.spec",
    "heads": "resnet_xray.train.heads",
    "fused_batchnorm": "resnet_xray.deploy.fuse",
}

_REGISTRY: dict[str, type[Change]] = {}


class SpecError(ValueError):
    """A change record that is not well-formed; the message names the field."""


class Change:
    """One structural change. Subclasses are frozen dataclasses whose fields are plain data."""

    kind: ClassVar[str] = ""

    def apply(self, model: nn.Module) -> nn.Module:
        """Make this change's structure on ``model`` (weights are loaded afterwards) and return the result."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise :class:`SpecError` naming the field that is out of range (called on every load)."""

    def describe(self) -> str:
        return self.kind

    def upgrade_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Rename an older file's state_dict keys to this release's module names (usually none)."""
        return state

    def to_data(self) -> dict[str, Any]:
        return {"kind": self.kind, **{f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}}  # type: ignore[arg-type]

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Change:
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        extra = sorted(set(data) - set(names) - {"kind"})
        if extra:
            raise SpecError(f"unknown field {extra[0]!r} (a {cls.kind} change has {', '.join(names)})")
        missing = [n for n in names if n not in data and _required(cls, n)]
        if missing:
            raise SpecError(f"missing field {missing[0]!r}")
        change = cls(**{n: data[n] for n in names if n in data})
        change.check()
        return change

    @classmethod
    def infer(cls, model: nn.Module, reference: nn.Module) -> Change | None:
        """This kind of change as seen on ``model`` against its unchanged ``reference`` arch, if any."""
        return None


def _required(cls: type, name: str) -> bool:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _plain(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def register(cls: type[Change]) -> type[Change]:
    """Class decorator: make ``cls`` readable from checkpoints under ``cls.kind``."""
    if cls.kind not in PROVIDERS:
        raise ValueError(f"change kind {cls.kind!r} is not listed in resnet_xray.spec.PROVIDERS")
    _REGISTRY[cls.kind] = cls
    return cls


def change_type(kind: str) -> type[Change]:
    if kind not in _REGISTRY:
        if kind not in PROVIDERS:
            raise SpecError(f"unknown change kind {kind!r} (this release knows {', '.join(PROVIDERS)})")
        importlib.import_module(PROVIDERS[kind])
    return _REGISTRY[kind]


def changes_from_data(items: Any) -> list[Change]:
    """Typed changes from a checkpoint's ``changes`` list, each checked field by field."""
    if not isinstance(items, list | tuple):
        raise SpecError(f"must be a list of changes, found {type(items).__name__}")
    out: list[Change] = []
    for i, d in enumerate(items):
        if not isinstance(d, dict):
            raise SpecError(f"[{i}] must be a dict with a 'kind', found {type(d).__name__}")
        kind = d.get("kind")
        if not isinstance(kind, str):
            raise SpecError(f"[{i}] has no 'kind' string")
        try:
            out.append(change_type(kind).from_data(d))
        except SpecError as e:
            raise SpecError(f"[{i}] ({kind}): {e}") from None
        except (TypeError, ValueError, KeyError) as e:
            raise SpecError(f"[{i}] ({kind}): malformed ({e})") from None
    return out


def changes_to_data(changes: Iterable[Change]) -> list[dict[str, Any]]:
    return [c.to_data() for c in changes]


def replay(model: nn.Module, changes: Sequence[Change]) -> nn.Module:
    """Apply ``changes`` in order to a freshly built model; returns the changed model."""
    for c in changes:
        model = c.apply(model)
    return model


def infer_changes(model: nn.Module, reference: nn.Module) -> list[Change]:
    """The changes that turn ``reference`` (the unchanged arch) into ``model``'s structure.

    For models that were changed without a record (built by hand, then trained). The
    kinds are tried in the one order that always replays: classifier, widths, heads, fusion.
    """
    found = []
    for kind in PROVIDERS:
        c = change_type(kind).infer(model, reference)
        if c is not None:
            found.append(c)
    return found


def describe(changes: Sequence[Change]) -> str:
    return " -> ".join(c.describe() for c in changes) or "none"
