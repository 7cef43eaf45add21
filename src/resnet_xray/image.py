"""Load and validate images, and the preprocessing that turns a photo into the network's input.

Every command reads images through :func:`load_image` and folders through
:class:`ImageStream`, so a bad file is reported the same way everywhere.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
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
# Budget for decoding one image and converting it to RGB (bytes). Over it, a JPEG is decoded at
# 1/2, 1/4 or 1/8 scale (DCT scaling, which never allocates the full image); formats that cannot
# decode at a reduced scale are refused. 150 MB keeps one image's peak well under a ResNet-50's
# own footprint (50 M pixels of RGB, 19 M of RGBA).
MAX_DECODE_BYTES = 150_000_000
# Peak bytes per pixel of decoding plus :func:`to_rgb` for each mode (measured with tracemalloc-free
# RSS runs; the raster itself, the RGB result and any temporaries together).
_WORK_BYTES_PER_PIXEL = {"1": 4, "L": 4, "P": 5, "RGB": 3, "RGBA": 8, "LA": 6, "PA": 6, "CMYK": 7, "YCbCr": 6,
                         "I;16": 10, "I;16B": 10, "I;16L": 10, "I": 12, "F": 12}


def decode_bytes(mode: str, size: tuple[int, int]) -> int:
    """Peak memory :func:`load_image` needs for an image of this mode and size (an estimate)."""
    return size[0] * size[1] * _WORK_BYTES_PER_PIXEL.get(mode, 12)
# No image we can decode within the pixel budgets comes near this; checked with stat() before opening.
MAX_FILE_BYTES = 256 * 1024 * 1024
# Resize (shorter side) then CenterCrop only ever uses the middle of a long, thin picture. Above this
# aspect ratio the long side is cut down first, so a 100000x2 strip is not resized to 12.8 M x 256.
MAX_RESIZE_ASPECT = 4.0


@dataclass(frozen=True)
class Preprocessing:
    """Resize (shorter side), centre-crop, to tensor, normalise: torchvision's ImageNet evaluation pipeline by default."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    source: str = "ImageNet pipeline (Resize 256, CenterCrop 224, ImageNet mean/std)"

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

    def scaled_to(self, size: int, source: str | None = None) -> Preprocessing:
        """This pipeline for a ``size`` x ``size`` input: the resize scales with the crop, so the crop keeps its share of the photo.

        ``source``: the new pipeline's description (default: this one's).
        """
        return replace(self, resize=round(self.resize * size / self.crop), crop=size, source=source or self.source)

    def crop_transform(self) -> T.Compose:
        """The pipeline up to the crop: a PIL image in, the crop the network sees out, before any scaling."""
        interp = T.InterpolationMode(self.interpolation)
        return T.Compose([
            BoundedAspect(self.resize, self.crop),
            T.Resize(self.resize, interpolation=interp, antialias=True),
            T.CenterCrop(self.crop),
        ])

    def transform(self) -> T.Compose:
        return T.Compose([*self.crop_transform().transforms, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform()(image)

    def denormalize(self, x: torch.Tensor) -> np.ndarray:
        """Undo Normalize: a CHW tensor back to an HWC uint8 picture of what the network sees."""
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        img = (x.detach().cpu().float() * std + mean).clamp(0, 1)
        return (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


class BoundedAspect:
    """Cut the long side of an extreme-aspect image to what Resize + CenterCrop can use.

    Resizing the shorter side of a 100000x2 strip to 256 would allocate a 12.8 M x 256
    image (gigabytes) only for CenterCrop to keep 224 columns of it. Keeping the centred
    ``MAX_RESIZE_ASPECT`` x shorter side (never less than the crop needs) bounds the resize;
    images up to that aspect ratio pass through untouched.
    """

    def __init__(self, resize: int, crop: int) -> None:
        self.resize, self.crop = resize, crop

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        short, long = min(w, h), max(w, h)
        if short == 0 or long <= MAX_RESIZE_ASPECT * short:
            return img
        scale = self.resize / short
        # The crop's width in source pixels, plus the resampling filter's reach on both sides.
        need = math.ceil(self.crop / scale) + 2 * (math.ceil(2 / scale) + 2)
        keep = min(long, max(math.ceil(MAX_RESIZE_ASPECT * short), need))
        keep += (long - keep) % 2  # an even cut keeps the centre exactly where it was
        off = (long - keep) // 2
        return img.crop((off, 0, off + keep, h) if w > h else (0, off, w, off + keep))


def check_file(path: Path, flag: str | None = None, max_bytes: int | None = None) -> int:
    """Refuse anything but a regular, non-empty file (at most ``max_bytes``) without opening it; return its size.

    Opening a FIFO would block forever, and reading a huge file only to say it is not an
    image wastes its size in memory, so both are decided from ``stat``. Messages start
    with ``flag`` (when given) and the path.
    """
    where = f"{flag} {path}" if flag else str(path)
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise XrayError(f"{where}: symlink loop (too many levels of symbolic links)") from None
        if e.errno == errno.ENOENT:
            if os.path.islink(path):
                raise XrayError(f"{where}: dangling symlink (points to {os.readlink(path)}, which does not exist)") from None
            raise XrayError(f"{where}: no such file") from None
        raise XrayError(f"{where}: cannot read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise XrayError(f"{where}: is a directory, not an image")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a special file")
        raise XrayError(f"{where}: not a regular file ({kind}); not read")
    if st.st_size == 0:
        raise XrayError(f"{where}: empty file (0 bytes)")
    if max_bytes is not None and st.st_size > max_bytes:
        raise XrayError(f"{where}: refused, {st.st_size / 2**20:,.0f} MiB is larger than the {max_bytes // 2**20} MiB "
                        f"an image may be here; downscale or recompress it")
    return st.st_size


def load_image(path: str | Path) -> Image.Image:
    """Open ``path`` as an upright 8-bit RGB image, or raise XrayError naming the file and why.

    EXIF rotation is applied; grayscale, palette, RGBA/LA (composited on white), CMYK and
    16-bit images are converted; decompression bombs, truncated, empty and non-image
    files are refused, and so are FIFOs, devices, symlink loops and files over
    ``MAX_FILE_BYTES`` (decided before a byte is read). The file is streamed to the
    decoder, never read whole, and JPEGs over ``MAX_DECODE_BYTES`` decode at reduced scale.
    """
    path = Path(path)
    check_file(path, max_bytes=MAX_FILE_BYTES)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise XrayError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        return _decode(f, str(path))


def _decode(fp, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x the limit; we refuse at 1x.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)  # reads the header only
            w, h = img.size
            if decode_bytes(img.mode, img.size) > MAX_DECODE_BYTES:
                if img.format == "JPEG":
                    k = 2
                    while k < 8 and decode_bytes(img.mode, (w // k, h // k)) > MAX_DECODE_BYTES:
                        k *= 2
                    img.draft(img.mode, (math.ceil(w / k), math.ceil(h / k)))
                if decode_bytes(img.mode, img.size) > MAX_DECODE_BYTES:
                    raise XrayError(f"{name}: refused, {w}x{h} {img.mode} needs about {decode_bytes(img.mode, (w, h)) / 1e6:,.0f} MB "
                                    f"to decode, more than the {MAX_DECODE_BYTES / 1e6:,.0f} MB allowed here; downscale it first")
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise XrayError(f"{name}: refused, more than {MAX_IMAGE_PIXELS:,} pixels (possible decompression bomb)") from None
    except UnidentifiedImageError:
        raise XrayError(f"{name}: not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = "truncated or corrupt" if "truncated" in str(e) or isinstance(e, SyntaxError) else str(e)
        raise XrayError(f"{name}: cannot decode image ({reason})") from None
    # in_place: without it Pillow returns a full copy even when there is nothing to rotate.
    ImageOps.exif_transpose(img, in_place=True)
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # float32 and in-place steps: one temporary, not four float64 ones (bounded memory).
        arr = np.array(img, dtype=np.float32)  # a writable copy (asarray of an F image is a read-only view)
        np.nan_to_num(arr, copy=False, nan=0.0, posinf=0.0, neginf=0.0)  # float images may hold NaN/inf
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr *= 255.0 / hi
        np.clip(arr, 0, 255, out=arr)
        img = Image.fromarray(np.rint(arr, out=arr).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        if img.mode not in ("RGBA", "LA"):
            img = img.convert("RGBA")
        # Pasting through the alpha band onto white is alpha compositing, without three RGBA copies.
        white = Image.new("RGB", img.size, (255, 255, 255))
        white.paste(img.convert("RGB") if img.mode == "LA" else img, mask=img.getchannel("A"))
        return white
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


@dataclass
class Skipped:
    path: str
    reason: str


def _scan_candidate(f: Path) -> bool:
    """Image files, plus every entry that is not a plain file or folder (FIFO, socket, symlink
    loop, dangling link): those are kept so loading reports them as skipped, never dropped silently."""
    try:
        st = os.stat(f)
    except OSError:
        return True  # a loop or a dangling link
    if stat.S_ISDIR(st.st_mode):
        return False
    return not stat.S_ISREG(st.st_mode) or f.suffix.lower() in IMAGE_EXTENSIONS


class UnreadableFolderError(XrayError):
    """A folder under an input could not be listed: its images would be missing without a word."""


def folder_images(folder: str | Path, *, skip_unreadable: bool = False, skipped: list[Skipped] | None = None,
                  flag: str | None = None) -> list[Path]:
    """The image files under ``folder``, recursively and sorted: the one folder listing.

    FIFOs, sockets, symlink loops and dangling links are included, so loading reports them as
    skipped. A folder (``folder`` itself or any below it) that cannot be listed raises
    :class:`UnreadableFolderError` naming it: ``Path.rglob`` and a bare ``iterdir`` loop passed it
    over in silence, and a class folder that vanished trained a model with a class fewer. With
    ``skip_unreadable`` it is appended to ``skipped`` instead. ``flag`` is the option that allows
    skipping, named in the message where the command has one.
    """
    found: list[Path] = []

    def unreadable(e: OSError) -> None:
        where = e.filename if e.filename is not None else folder
        reason = e.strerror or str(e)
        if not skip_unreadable:
            allow = f", or pass {flag} to go on without it" if flag else " or move it out of the input"
            raise UnreadableFolderError(f"{where}: cannot read this folder ({reason}); its images would be left out. "
                                        f"Fix its permissions{allow}")
        if skipped is not None:
            skipped.append(Skipped(str(where), f"folder cannot be read ({reason})"))

    # os.walk does not descend into symlinked folders (as rglob did), and lists dangling links and loops as files.
    for top, _dirs, names in os.walk(folder, onerror=unreadable):
        found.extend(f for f in (Path(top) / n for n in names) if _scan_candidate(f))
    return sorted(found)


def expand_inputs(inputs: Iterable[str | Path], *, skip_unreadable: bool = False, skipped: list[Skipped] | None = None,
                  flag: str | None = None) -> list[Path]:
    """Files as given, folders expanded (recursively, sorted) by :func:`folder_images`.

    FIFOs, sockets, symlink loops and dangling links met in a folder are included too, so
    :class:`ImageStream` lists them as skipped with their reason.
    """
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files.extend(folder_images(p, skip_unreadable=skip_unreadable, skipped=skipped, flag=flag))
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
    skip_unreadable: bool = False  # an unreadable folder goes into ``skipped`` instead of raising

    def __post_init__(self) -> None:
        self.files = expand_inputs(self.inputs, skip_unreadable=self.skip_unreadable, skipped=self.skipped)

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
