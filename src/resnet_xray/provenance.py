"""Where a model's weights came from, in the one shape every output carries.

Random weights give confident-looking but meaningless labels, so every ``--json``
document, and every API result, says which weights made it (issue 13: provenance).
This module imports nothing heavy: the CLI's foundation uses it before torch loads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

RANDOM_WEIGHTS_WARNING = (
    "WARNING: using RANDOM weights; the labels below are meaningless. "
    "Pass --weights imagenet with network access, or --weights PATH to a saved file."
)
UNKNOWN_WEIGHTS_WARNING = (
    "WARNING: unknown weights: the model file does not say which weights it holds (no description or sidecar), "
    "so the labels below may be meaningless."
)


@dataclass(frozen=True)
class WeightsInfo:
    """The top-level ``"weights"`` object of every JSON document."""

    source: str | None  # in words a user recognises: "random (seed 0)", a file path, a torchvision enum
    pretrained: bool  # False for random init: labels are then meaningless
    warning: str | None = None  # set exactly when the outputs must not be read as real predictions

    @classmethod
    def of(cls, meta: Any) -> WeightsInfo:
        """From a :class:`~resnet_xray.model.ModelMeta` (anything with ``weights`` and ``pretrained``)."""
        if meta.pretrained is None:  # a deployed file without a description: neither trained nor random is known
            return cls(str(meta.weights), False, UNKNOWN_WEIGHTS_WARNING)
        pretrained = bool(meta.pretrained)
        return cls(str(meta.weights), pretrained, None if pretrained else RANDOM_WEIGHTS_WARNING)

    @classmethod
    def from_sidecar(cls, sidecar: dict[str, Any]) -> WeightsInfo:
        """What an exported model's sidecar records (older sidecars lack ``pretrained``)."""
        source = sidecar.get("weights")
        if source is None:
            return cls.none("the model file does not say which weights it holds")
        pretrained = sidecar.get("pretrained")
        if pretrained is None:
            pretrained = not str(source).startswith("random")
        return cls(str(source), bool(pretrained), None if pretrained else RANDOM_WEIGHTS_WARNING)

    @classmethod
    def random(cls, source: str = "random") -> WeightsInfo:
        return cls(source, False, RANDOM_WEIGHTS_WARNING)

    @classmethod
    def none(cls, why: str) -> WeightsInfo:
        """For outputs no weights went into (``preprocess`` without ``--weights``, for example)."""
        return cls(None, False, why)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

