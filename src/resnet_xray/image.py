"""Load and validate images, and the preprocessing that turns a photo into the network's input.

Every command reads images through :func:`load_image` and folders through
:class:`ImageStream`, so a bad file is reported the same way everywhere.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import transforms as T

from .errors import XrayError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# PIL's own default (about 89 M pixels); above it an image is refused as a decompression bomb.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


@dataclass(frozen=True)
class Preprocessing:
    """Resize (shorter side), centre-crop, to tensor, normalise: the seed's pipeline by default."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    source: str = "seed pipeline (Resize 256, CenterCrop 224, ImageNet mean/std)"

    @classmethod
    def seed(cls) -> Preprocessing:
        return cls()

    @classmethod
    def from_weights(cls, weights) -> Preprocessing:
        """The transforms a torchvision weights enum declares (V2 resizes to 232, for example)."""
        t = weights.transforms()
        resize = t.resize_size[0] if isinstance(t.resize_size, (list, tuple)) else int(t.resize_size)
        crop = t.crop_size[0] if isinstance(t.crop_size, (list, tuple)) else int(t.crop_size)
        return cls(
            resize=int(resize),
            crop=int(crop),
            mean=tuple(float(x) for x in t.mean),
            std=tuple(float(x) for x in t.std),
            interpolation=t.interpolation.value,
            source=f"{weights.name} transforms (Resize {resize}, CenterCrop {crop})",
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def transform(self) -> T.Compose:
        interp = T.InterpolationMode(self.interpolation)
        return T.Compose([
            T.Resize(self.resize, interpolation=interp, antialias=True),
            T.CenterCrop(self.crop),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform()(image)

    def denormalize(self, x: torch.Tensor) -> np.ndarray:
        """Undo Normalize: a CHW tensor back to an HWC uint8 picture of what the network sees."""
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        img = (x.detach().cpu().float() * std + mean).clamp(0, 1)
        return (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def load_image(path: str | Path) -> Image.Image:
    """Open ``path`` as an upright 8-bit RGB image, or raise XrayError naming the file and why.

    EXIF rotation is applied; grayscale, palette, RGBA/LA (composited on white), CMYK and
    16-bit images are converted; decompression bombs, truncated, empty and non-image
    files are refused.
    """
    path = Path(path)
    if not path.exists():
        raise XrayError(f"{path}: no such file")
    if path.is_dir():
        raise XrayError(f"{path}: is a directory, not an image")
    try:
        size = path.stat().st_size
        data = path.read_bytes() if size else b""
    except OSError as e:
        raise XrayError(f"{path}: cannot read ({e.strerror})") from None
    if size == 0:
        raise XrayError(f"{path}: empty file (0 bytes)")
    return decode_image(data, name=str(path))


def decode_image(data: bytes, name: str = "<bytes>") -> Image.Image:
    """Decode image bytes with the same checks and conversions as :func:`load_image`."""
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x the limit; we refuse at 1x.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise XrayError(f"{name}: refused, more than {MAX_IMAGE_PIXELS:,} pixels (possible decompression bomb)") from None
    except UnidentifiedImageError:
        raise XrayError(f"{name}: not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = "truncated or corrupt" if "truncated" in str(e) or isinstance(e, SyntaxError) else str(e)
        raise XrayError(f"{name}: cannot decode image ({reason})") from None
    return to_rgb(ImageOps.exif_transpose(img))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray((np.clip(arr / hi, 0, 1) * 255).round().astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


@dataclass
class Skipped:
    path: str
    reason: str


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders expanded (recursively, sorted) to their image files."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS))
        else:
            files.append(p)
    return files


@dataclass
class ImageStream:
    """Iterate ``(path, image)`` over files and folders one image at a time.

    Unreadable files are skipped and collected in ``skipped``, so a batch goes on
    past a bad file and can report it at the end.
    """

    inputs: Iterable[str | Path]
    skipped: list[Skipped] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.files = expand_inputs(self.inputs)

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[tuple[Path, Image.Image]]:
        for f in self.files:
            try:
                yield f, load_image(f)
            except XrayError as e:
                self.skipped.append(Skipped(str(f), str(e).split(": ", 1)[-1]))


def bundled_cat() -> Path:
    """Chelsea the cat (scikit-image's ``chelsea``, CC0), shipped for the demo and tests."""
    return Path(__file__).parent / "assets" / "chelsea.png"


def image_batches(
    inputs: ImageStream | Iterable[str | Path],
    preprocessing: Preprocessing | Any,
    batch_size: int,
    *,
    skipped: list[Skipped] | None = None,
    progress: bool = False,
    desc: str = "images",
) -> Iterator[tuple[list[Path], torch.Tensor]]:
    """Stream preprocessed NCHW batches from files and folders: the one batching loop.

    Args:
        inputs: files and/or folders, or a ready :class:`ImageStream`.
        preprocessing: a :class:`Preprocessing` or any callable from a PIL image to a CHW tensor.
        batch_size: images per batch (the last one may be smaller).
        skipped: unreadable files are appended here once the stream is exhausted.
        progress: a progress bar on stderr.

    Yields:
        ``(paths, batch)``; only one batch of decoded images is held at a time.
    """
    stream = inputs if isinstance(inputs, ImageStream) else ImageStream(inputs)
    transform = preprocessing.transform() if isinstance(preprocessing, Preprocessing) else preprocessing
    from tqdm.auto import tqdm  # only for callers that ask for a bar

    bar = tqdm(total=len(stream), unit="img", desc=desc, disable=not progress, leave=False)
    names: list[Path] = []
    tensors: list[torch.Tensor] = []
    try:
        for path, img in stream:
            names.append(path)
            tensors.append(transform(img))
            bar.update(1)
            if len(tensors) == batch_size:
                yield names, torch.stack(tensors)
                names, tensors = [], []
        bar.update(len(stream) - bar.n)
    finally:
        bar.close()
    if skipped is not None and skipped is not stream.skipped:
        skipped.extend(stream.skipped)
    if tensors:
        yield names, torch.stack(tensors)


def load_batch(inputs: Iterable[str | Path], preprocessing: Preprocessing) -> tuple[list[str], torch.Tensor, list[Skipped]]:
    """Every readable image of ``inputs`` as one batch: ``(names, batch, skipped)``, for small checks."""
    skipped: list[Skipped] = []
    names: list[str] = []
    parts: list[torch.Tensor] = []
    for paths, x in image_batches(inputs, preprocessing, 64, skipped=skipped):
        names.extend(map(str, paths))
        parts.append(x)
    if not parts:
        raise XrayError("no readable images to check with")
    return names, torch.cat(parts), skipped
