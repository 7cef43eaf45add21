"""Section 4 of the article: the preprocessing pipeline, and a picture of what the network sees."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import XrayError
from .image import Preprocessing, load_image
from .model import DEFAULT_ARCH, WEIGHT_ALIASES, load_model, weights_enum
from .options import option
from .provenance import WeightsInfo


@dataclass
class PreprocessOptions:
    output: str | Path | None = option(None, "PNG of the de-normalised crop")
    weights: str | None = option(None, "use these weights' declared transforms (default: the ImageNet pipeline: resize 256, crop 224)")
    arch: str | None = option(None, "arch for --weights imagenet* (default: resnet50)")


def resolve_preprocessing(weights: str | None, arch: str | None = None) -> Preprocessing:
    """The pipeline for ``weights`` without loading them (aliases read torchvision's enum)."""
    if weights is None or weights == "random":
        return Preprocessing.seed()
    if weights in WEIGHT_ALIASES:
        enum = weights_enum(arch or DEFAULT_ARCH)
        member = WEIGHT_ALIASES[weights]
        if member != "DEFAULT" and member not in enum.__members__:
            raise XrayError(f"--weights {weights}: torchvision has no {member} weights for {arch}")
        return Preprocessing.from_weights(enum.DEFAULT if member == "DEFAULT" else enum[member])
    return load_model(arch, weights)[1].preprocessing


def preprocess_image(image: str | Path, options: PreprocessOptions | None = None) -> dict[str, Any]:
    """Run the pipeline on one image; optionally save the crop the network sees as a PNG."""
    opts = options or PreprocessOptions()
    pre = resolve_preprocessing(opts.weights, opts.arch)
    img = load_image(image)
    x = pre(img)
    info: dict[str, Any] = {
        "image": str(image),
        "original_size": list(img.size),
        "transforms": pre.source,
        "shape": list(x.shape),
        "dtype": str(x.dtype).replace("torch.", ""),
        "channel_mean": [float(v) for v in x.mean(dim=(1, 2))],
        "channel_std": [float(v) for v in x.std(dim=(1, 2))],
    }
    if opts.output:
        out = Path(opts.output)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pre.denormalize(x)).save(out)
        except (OSError, ValueError) as e:
            raise XrayError(f"-o {out}: cannot write ({getattr(e, 'strerror', None) or e})") from None
        info["output"] = str(out)
    return info


@dataclass
class PreprocessResult:
    """One image through the pipeline: the tensor's shape and statistics, and whose transforms were used."""

    image: str
    original_size: list[int]  # width, height
    transforms: str  # the pipeline, in words
    shape: list[int]
    dtype: str
    channel_mean: list[float]  # per channel, after normalisation
    channel_std: list[float]
    weights: WeightsInfo  # whose declared transforms were used
    output: str | None = None  # the PNG of what the network sees, when asked for

    def to_dict(self) -> dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("weights", "output")}
        if self.output is not None:
            doc["output"] = self.output
        return {**doc, "weights": self.weights.to_dict()}
