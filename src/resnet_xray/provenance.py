"""Where a model's weights came from, and whether they are known to be trained, in the one shape every output carries.

Random weights give confident-looking but meaningless labels, so every ``--json``
document, and every API result, says which weights made it, whether they are known to
be trained (``true``, ``false`` or ``"unknown"``) and the evidence for that (see
docs/model.md). This module imports nothing heavy: the CLI's foundation uses it before torch loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RANDOM_WEIGHTS_WARNING = (
    "WARNING: using RANDOM weights; the labels below are meaningless. "
    "Pass --weights imagenet with network access, or --weights PATH to a saved file."
)
UNKNOWN_WEIGHTS_WARNING = (
    "WARNING: unknown weights: the model file does not say which weights it holds (no description or sidecar), "
    "so the labels below may be meaningless."
)
UNKNOWN = "unknown"


def untrained_warning(source: str, evidence: str) -> str:
    """The warning for weights known never to have been trained (a file, not a seeded init)."""
    return f"WARNING: {source} holds UNTRAINED weights ({evidence}); the labels below are meaningless."


def unknown_warning(source: str | None, evidence: str) -> str:
    """The warning for weights that may or may not be trained."""
    return (f"WARNING: whether {source or 'these weights'} were trained is unknown ({evidence}); "
            "the labels below may be meaningless.")


@dataclass(frozen=True)
class TrainingStage:
    """One training run the weights went through (a ``finetune``, or a ``prune`` that fine-tuned)."""

    by: str  # the command: "finetune" or "prune"
    data: str | None  # the data folder's name
    classes: tuple[str, ...]  # the class names it trained on
    epochs: int  # epochs completed (0: the run never trained)
    steps: int  # optimiser steps taken; 0 means the weights were never updated
    best_val_accuracy: float | None  # of the saved weights, on the data's validation split
    started_from: str  # the weights the run began from, in words a user recognises

    def describe(self) -> str:
        if self.steps <= 0:
            return f"{self.by} took no training step"
        acc = f", best validation accuracy {self.best_val_accuracy:.1%}" if self.best_val_accuracy is not None else ""
        data = f" on {self.data}" if self.data else ""
        return (f"{self.by}: {self.epochs} epoch(s), {self.steps} step(s){data} ({len(self.classes)} classes){acc}; "
                f"started from {self.started_from}")

    def to_data(self) -> dict[str, Any]:
        return {"by": self.by, "data": self.data, "classes": list(self.classes), "epochs": self.epochs,
                "steps": self.steps, "best_val_accuracy": self.best_val_accuracy, "started_from": self.started_from}

    @classmethod
    def from_data(cls, d: Any) -> TrainingStage:
        """Raises ``ValueError`` naming the field that is malformed."""
        if not isinstance(d, dict):
            raise ValueError(f"must be a dict, found {type(d).__name__}")
        for k, types in (("by", str), ("epochs", int), ("steps", int), ("started_from", str)):
            if not isinstance(d.get(k), types) or isinstance(d.get(k), bool):
                raise ValueError(f".{k} must be {types.__name__}, found {d.get(k)!r}")
        if d.get("data") is not None and not isinstance(d["data"], str):
            raise ValueError(f".data must be a string, found {d['data']!r}")
        classes = d.get("classes", [])
        if not isinstance(classes, list | tuple) or not all(isinstance(c, str) for c in classes):
            raise ValueError(".classes must be a list of strings")
        acc = d.get("best_val_accuracy")
        if acc is not None and (isinstance(acc, bool) or not isinstance(acc, int | float)):
            raise ValueError(f".best_val_accuracy must be a number, found {acc!r}")
        return cls(d["by"], d.get("data"), tuple(classes), d["epochs"], d["steps"],
                   None if acc is None else float(acc), d["started_from"])


@dataclass(frozen=True)
class Provenance:
    """Whether weights are known to be trained, why, and the training runs they went through.

    Every checkpoint this project writes stores it whole (key ``provenance``); fuse, prune
    and export carry it on, so a model that never saw a training step stays marked untrained.
    """

    trained: bool | None  # None: nothing says either way
    evidence: str  # why ``trained`` is what it is, in one clause
    history: tuple[TrainingStage, ...] = ()  # oldest first

    @property
    def trained_value(self) -> bool | str:
        """``True``, ``False`` or ``"unknown"``, as the JSON documents print it."""
        return UNKNOWN if self.trained is None else self.trained

    def after(self, stage: TrainingStage) -> Provenance:
        """The provenance of these weights once ``stage`` has run on them."""
        history = (*self.history, stage)
        if stage.steps > 0:
            return Provenance(True, f"trained by resnet-xray {stage.describe()}", history)
        return Provenance(self.trained, f"{stage.describe()}; {self.evidence}", history)

    def to_data(self) -> dict[str, Any]:
        return {"trained": self.trained_value, "evidence": self.evidence, "history": [s.to_data() for s in self.history]}

    @classmethod
    def from_data(cls, d: Any) -> Provenance:
        """Raises ``ValueError`` naming the field that is malformed (relative to ``provenance``)."""
        if not isinstance(d, dict):
            raise ValueError(f" must be a dict, found {type(d).__name__}")
        t = d.get("trained")
        if t not in (True, False, UNKNOWN):
            raise ValueError(f".trained must be true, false or 'unknown', found {t!r}")
        if not isinstance(d.get("evidence"), str):
            raise ValueError(f".evidence must be a string, found {d.get('evidence')!r}")
        hist = d.get("history", [])
        if not isinstance(hist, list | tuple):
            raise ValueError(f".history must be a list, found {type(hist).__name__}")
        stages = []
        for i, s in enumerate(hist):
            try:
                stages.append(TrainingStage.from_data(s))
            except ValueError as e:
                raise ValueError(f".history[{i}]{e if str(e).startswith('.') else ' ' + str(e)}") from None
        return cls(None if t == UNKNOWN else bool(t), d["evidence"], tuple(stages))

    @classmethod
    def random_init(cls, source: str) -> Provenance:
        return cls(False, f"{source}: a fresh initialisation, never trained")

    @classmethod
    def imagenet(cls, source: str) -> Provenance:
        return cls(True, f"{source}: torchvision's published ImageNet weights")


@dataclass(frozen=True)
class WeightsInfo:
    """The top-level ``"weights"`` object of every JSON document."""

    source: str | None  # in words a user recognises: "random (seed 0)", a file path, a torchvision enum
    pretrained: bool  # False for random init and for files known to be untrained: labels are then meaningless
    warning: str | None = None  # set whenever ``trained`` is not true: the outputs must not be read as real predictions
    # True, False or "unknown"; None here means: derive it from ``pretrained`` (False stays False, True is unknown)
    trained: bool | str | None = None
    trained_evidence: str | None = None  # why ``trained`` is what it is
    training: tuple[dict[str, Any], ...] = field(default_factory=tuple)  # the training runs, oldest first

    def __post_init__(self) -> None:
        trained = self.trained
        if trained is None:
            trained = False if not self.pretrained else UNKNOWN
            object.__setattr__(self, "trained", trained)
        if self.trained_evidence is None:
            object.__setattr__(self, "trained_evidence", "random initialisation" if trained is False else
                               "nothing recorded says whether these weights were trained")
        if self.warning is None and trained is not True:
            object.__setattr__(self, "warning", RANDOM_WEIGHTS_WARNING if trained is False
                               else unknown_warning(self.source, str(self.trained_evidence)))

    @classmethod
    def of(cls, weights: Any) -> WeightsInfo:
        """The one way to a WeightsInfo from what a model carries: a :class:`~resnet_xray.model.ModelMeta`
        (anything with ``weights``, ``pretrained`` and ``provenance``), an exported model's sidecar or
        description (a dict), or a WeightsInfo itself."""
        if isinstance(weights, cls):
            return weights
        if isinstance(weights, dict):
            return cls._of_sidecar(weights)
        source = str(weights.weights)
        prov = getattr(weights, "provenance", None)
        if prov is None:
            if weights.pretrained is None:  # a deployed file without a description: neither trained nor random is known
                return cls(source, False, UNKNOWN_WEIGHTS_WARNING, UNKNOWN, "the model file has no description or sidecar")
            if not weights.pretrained:
                return cls.random(source)
            prov = Provenance(None, "its metadata does not record how the weights were made")
        return cls.from_provenance(source, prov, pretrained=weights.pretrained)

    @classmethod
    def from_provenance(cls, source: str, prov: Provenance, *, pretrained: bool | None = None) -> WeightsInfo:
        if prov.trained is True:
            warning = None
        elif prov.trained is False:
            warning = RANDOM_WEIGHTS_WARNING if source.startswith("random") else untrained_warning(source, prov.evidence)
        else:
            warning = unknown_warning(source, prov.evidence)
        pre = prov.trained is not False if pretrained is None else bool(pretrained) and prov.trained is not False
        return cls(source, pre, warning, prov.trained_value, prov.evidence, tuple(s.to_data() for s in prov.history))

    @classmethod
    def _of_sidecar(cls, sidecar: dict[str, Any]) -> WeightsInfo:
        """What an exported model's sidecar records (older sidecars lack ``pretrained`` and ``trained``)."""
        source = sidecar.get("weights")
        if source is None:
            return cls.none("the model file does not say which weights it holds")
        _, prov = described_provenance(sidecar)
        return cls.random(str(source)) if prov is None else cls.from_provenance(str(source), prov)

    @classmethod
    def random(cls, source: str = "random") -> WeightsInfo:
        return cls(source, False, RANDOM_WEIGHTS_WARNING, False, f"{source}: a fresh initialisation, never trained")

    @classmethod
    def none(cls, why: str) -> WeightsInfo:
        """For outputs no weights went into (``preprocess`` without ``--weights``, for example)."""
        return cls(None, False, why, UNKNOWN, why)

    @property
    def known_trained(self) -> bool:
        """Whether interpretive readings (what a filter *means*) may be shown."""
        return self.trained is True

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "pretrained": self.pretrained, "trained": self.trained,
                "trained_evidence": self.trained_evidence, "training": [dict(s) for s in self.training],
                "warning": self.warning}

    def trained_line(self) -> str:
        """One line for text output: whether the weights are trained, and the evidence."""
        word = {True: "yes", False: "NO"}.get(self.trained, "unknown")  # type: ignore[call-overload]
        return f"trained: {word} ({self.trained_evidence})"


def sidecar_provenance(desc: dict[str, Any]) -> Provenance | None:
    """The provenance an exported model's description records, or None for descriptions written before it."""
    if "trained" not in desc:
        return None
    try:
        return Provenance.from_data({"trained": desc.get("trained"), "evidence": desc.get("trained_evidence") or "",
                                     "history": desc.get("training") or []})
    except ValueError:
        return Provenance(None, "the model's description holds a malformed record of its training")


def described_provenance(desc: dict[str, Any]) -> tuple[bool | None, Provenance | None]:
    """What a deployed model's description says of its weights: ``(pretrained, provenance)``.

    ``pretrained`` is None when the description names no weights at all (unknown, not random);
    descriptions older than ``pretrained`` judge by the weights' name. Provenance is None only
    for weights the description calls random; older trained-looking ones get an "unknown" record.
    """
    said = desc.get("pretrained")
    pretrained = said if isinstance(said, bool) else None if not desc.get("weights") else not str(desc["weights"]).startswith("random")
    prov = sidecar_provenance(desc)  # the checkpoint's record of training, carried by the export
    if prov is None and pretrained:
        prov = Provenance(None, "the model's description predates the record of training")
    return pretrained, prov


def sidecar_fields(prov: Provenance | None) -> dict[str, Any]:
    """What an exported model's description records of its weights' training (written beside ``pretrained``)."""
    if prov is None:
        prov = Provenance(None, "the exported model's checkpoint did not record its training")
    return {"trained": prov.trained_value, "trained_evidence": prov.evidence, "training": [s.to_data() for s in prov.history]}
