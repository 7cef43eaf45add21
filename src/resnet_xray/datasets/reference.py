"""The offline reference task: shapes on cluttered photo backgrounds, with a box for each.

A stand-in for ImageNet that needs no download. Every image is a function of
``(seed, split, class, index)`` alone, so the same arguments always write the same files.
Each image holds one object (circle, star, arrow, ...) at a random position, scale,
rotation and colour, filled solid, striped or two-tone, on a random crop of the bundled
cat photo with colour shifts, noise and distractor strokes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..atomic import earlier_output
from ..errors import XrayError
from ..options import OptionError, at_least, image_side, one_of, option, seed_in_range, within
from ..image import bundled_cat
from ..locks import output_lock
from ..progress import progress
from ..provenance import WeightsInfo

GENERATOR_VERSION = 2  # 2: milder stretch, clutter and patterned fills, so 15 CPU minutes suffice
SHAPES = ("circle", "triangle", "square", "pentagon", "star", "cross", "ring", "crescent", "arrow", "heart")
# The transfer task: shapes the reference model never saw, on the same kind of backgrounds.
TRANSFER_SHAPES = ("hexagon", "diamond", "ellipse", "trapezoid", "semicircle")
TASKS = {"reference": SHAPES, "transfer": TRANSFER_SHAPES}
SUPERSAMPLE = 2  # draw large, then downsample: anti-aliased edges like a photo's
SPLITS = {"train": 0, "val": 1}


@dataclass
class ReferenceOptions:
    classes: int | None = option(None, "number of shape classes, 2..the task's count (None: all of the task's)")
    per_class: int = option(200, "training images per class (10 classes x 200 = 2,000)")
    val_per_class: int | None = option(None, "validation images per class (None: a quarter of per_class, at least 10)")
    size: int = option(96, "image side in pixels")
    seed: int = 0
    min_scale: float = option(0.5, "object size as a fraction of the image side")
    max_scale: float = 0.85
    clutter: int = option(2, "distractor strokes per image (mean)")
    overwrite: bool = option(False, "replace an existing non-empty folder")
    task: str = option("reference", "reference: the 10 shapes; transfer: 5 other shapes (hexagon, diamond, ellipse, trapezoid, semicircle) for transfer-learning experiments")

    def __post_init__(self) -> None:
        one_of("task", self.task, tuple(TASKS))
        if self.classes is None:
            self.classes = len(TASKS[self.task])
        within("classes", self.classes, 2, len(TASKS[self.task]))
        at_least("per_class", self.per_class, 1)
        at_least("val_per_class", self.val_per_class, 1, allow_none=True)
        image_side("size", self.size)
        at_least("clutter", self.clutter, 0)
        seed_in_range("seed", self.seed)
        if not 0.05 <= self.min_scale <= self.max_scale <= 0.95:
            raise OptionError("min_scale", f"{self.min_scale}..{self.max_scale}", "need 0.05 <= min <= max <= 0.95")

    @property
    def n_val(self) -> int:
        return self.val_per_class if self.val_per_class is not None else max(10, self.per_class // 4)


# --- shapes as polygons in a unit frame (centre 0, radius about 1) ---


def _regular(n: int, r: float = 1.0, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _outline(shape: str, rng: np.random.Generator) -> tuple[list[list[tuple[float, float]]], list[list[tuple[float, float]]]]:
    """Filled polygons and hole polygons (drawn in background) for ``shape``."""
    if shape == "circle":
        return [_regular(64)], []
    if shape == "triangle":
        return [_regular(3)], []
    if shape == "square":
        return [_regular(4, phase=math.pi / 4)], []
    if shape == "pentagon":
        return [_regular(5)], []
    if shape == "star":
        inner = rng.uniform(0.38, 0.5)
        pts = [(math.cos(-math.pi / 2 + math.pi * k / 5) * (1 if k % 2 == 0 else inner),
                math.sin(-math.pi / 2 + math.pi * k / 5) * (1 if k % 2 == 0 else inner)) for k in range(10)]
        return [pts], []
    if shape == "cross":
        a = rng.uniform(0.28, 0.38)
        return [[(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]], []
    if shape == "ring":
        return [_regular(64)], [_regular(64, r=rng.uniform(0.5, 0.65))]
    if shape == "crescent":
        off = rng.uniform(0.35, 0.55)
        return [_regular(64)], [[(x + off, y - 0.1) for x, y in _regular(64, r=0.85)]]
    if shape == "arrow":
        s, h = rng.uniform(0.18, 0.28), rng.uniform(0.0, 0.25)
        return [[(-1, -s), (h, -s), (h, -0.7), (1, 0), (h, 0.7), (h, s), (-1, s)]], []
    if shape == "hexagon":
        return [_regular(6)], []
    if shape == "diamond":
        w = rng.uniform(0.5, 0.65)
        return [[(0, -1), (w, 0), (0, 1), (-w, 0)]], []
    if shape == "ellipse":
        return [[(x, y * rng.uniform(0.5, 0.6)) for x, y in _regular(64)]], []
    if shape == "trapezoid":
        top = rng.uniform(0.35, 0.55)
        return [[(-top, -0.6), (top, -0.6), (1, 0.6), (-1, 0.6)]], []
    if shape == "semicircle":
        return [[(math.cos(t), math.sin(t) - 0.4) for t in np.linspace(math.pi, 2 * math.pi, 40)]], []
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, 80, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [[(float(a) / 17, float(b) / 17 + 0.1) for a, b in zip(x, y)]], []
    raise ValueError(shape)


def _place(poly, cx: float, cy: float, r: float, angle: float, stretch: float):
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * stretch * c - y * s), cy + r * (x * stretch * s + y * c)) for x, y in poly]


# --- colours, backgrounds, fills ---


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    # Saturated or dark/light colours at random: colour alone never gives the class away.
    hsv = np.array([rng.uniform(0, 1), rng.uniform(0.3, 1.0), rng.uniform(0.25, 1.0)])
    rgb = Image.new("HSV", (1, 1), tuple(int(v * 255) for v in hsv)).convert("RGB").getpixel((0, 0))
    return tuple(int(v) for v in rgb)


def _luma(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _contrasting(bg_mean, rng: np.random.Generator, min_gap: float = 60.0) -> tuple[int, int, int]:
    """A random colour whose brightness differs from the background's; a few tries, then the best."""
    best, gap = None, -1.0
    for _ in range(12):
        c = _colour(rng)
        g = abs(_luma(c) - _luma(bg_mean))
        if g > gap:
            best, gap = c, g
        if g >= min_gap:
            break
    return best


def _background(cat: Image.Image, side: int, rng: np.random.Generator) -> Image.Image:
    w, h = cat.size
    crop = int(min(w, h) * rng.uniform(0.25, 0.9))
    x0, y0 = int(rng.integers(0, w - crop + 1)), int(rng.integers(0, h - crop + 1))
    bg = cat.crop((x0, y0, x0 + crop, y0 + crop)).resize((side, side), Image.BILINEAR)
    arr = np.asarray(bg, dtype=np.float32)
    arr = arr[..., rng.permutation(3)]  # swap colour channels: the cat is not always orange
    # Lower contrast than the object: cluttered, but the object stays the most salient thing.
    mean = arr.mean(axis=(0, 1), keepdims=True)
    arr = mean + (arr - mean) * rng.uniform(0.15, 0.4) + rng.uniform(-40, 40, size=3)
    if rng.random() < 0.5:  # a colour gradient across the image
        g = np.linspace(0, 1, side, dtype=np.float32)
        ramp = g[None, :, None] if rng.random() < 0.5 else g[:, None, None]
        arr = arr * (1 - 0.5 * ramp) + 0.5 * ramp * np.array(_colour(rng), dtype=np.float32)
    bg = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return bg.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2) * SUPERSAMPLE))


def _clutter(draw: ImageDraw.ImageDraw, side: int, n: int, rng: np.random.Generator) -> None:
    """Lines, arcs and dots: edges and colours that are not the object."""
    for _ in range(int(rng.poisson(n))):
        kind = rng.integers(0, 3)
        col = _colour(rng)
        width = int(rng.integers(1, 3) * SUPERSAMPLE)
        x, y = rng.uniform(0, side, size=2)
        if kind == 0:
            ang, ln = rng.uniform(0, 2 * math.pi), rng.uniform(0.15, 0.6) * side
            draw.line([(x, y), (x + ln * math.cos(ang), y + ln * math.sin(ang))], fill=col, width=width)
        elif kind == 1:
            r = rng.uniform(0.05, 0.2) * side
            a0 = rng.uniform(0, 360)
            draw.arc([x - r, y - r, x + r, y + r], a0, a0 + rng.uniform(60, 200), fill=col, width=width)
        else:
            r = rng.uniform(0.01, 0.04) * side
            draw.ellipse([x - r, y - r, x + r, y + r], fill=col)


def _fill_pattern(side: int, colour, rng: np.random.Generator) -> Image.Image:
    """Solid, striped or two-tone texture for the object."""
    style = rng.choice(3, p=[0.8, 0.1, 0.1])
    base = Image.new("RGB", (side, side), colour)
    if style == 0:
        return base
    other = _colour(rng)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    ang = rng.uniform(0, math.pi)
    if style == 1:
        period = rng.uniform(0.06, 0.14) * side
        mask = (np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * 2 * math.pi / period) > 0)
    else:
        mask = (xx * math.cos(ang) + yy * math.sin(ang)) > rng.uniform(0.3, 0.7) * side * (abs(math.cos(ang)) + abs(math.sin(ang)))
    arr = np.where(mask[..., None], np.array(other, np.uint8), np.array(colour, np.uint8))
    return Image.fromarray(arr.astype(np.uint8))


def render(shape: str, size: int, rng: np.random.Generator, opts: ReferenceOptions, cat: Image.Image) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """One image of ``shape`` and its tight box ``(x0, y0, x1, y1)`` as fractions of the side."""
    side = size * SUPERSAMPLE
    img = _background(cat, side, rng)
    draw = ImageDraw.Draw(img)
    _clutter(draw, side, opts.clutter // 2, rng)  # some clutter under the object...

    r = rng.uniform(opts.min_scale, opts.max_scale) * side / 2
    stretch = rng.uniform(0.9, 1.1)
    cx, cy = rng.uniform(r * 1.05, side - r * 1.05, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    polys, holes = _outline(shape, rng)
    mask = Image.new("L", (side, side), 0)
    mdraw = ImageDraw.Draw(mask)
    for p in polys:
        mdraw.polygon(_place(p, cx, cy, r, angle, stretch), fill=255)
    for p in holes:
        mdraw.polygon(_place(p, cx, cy, r, angle, stretch), fill=0)
    fill = _fill_pattern(side, _contrasting(np.asarray(img).reshape(-1, 3).mean(0), rng), rng)
    if rng.random() < 0.5:  # an outline in another colour
        edge = mask.filter(ImageFilter.MaxFilter(2 * SUPERSAMPLE + 1))
        img.paste(Image.new("RGB", (side, side), _colour(rng)), (0, 0), edge)
    img.paste(fill, (0, 0), mask)

    bbox = mask.getbbox()
    _clutter(ImageDraw.Draw(img), side, opts.clutter - opts.clutter // 2, rng)  # ...and some over it
    img = img.resize((size, size), Image.LANCZOS)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(2, 10), size=(size, size, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    x0, y0, x1, y1 = bbox or (0, 0, side, side)
    return img, (x0 / side, y0 / side, x1 / side, y1 / side)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def make_reference_dataset(out: str | Path, options: ReferenceOptions | None = None, *, quiet: bool = False) -> dict:
    """Write the reference task to ``out``: ``train/`` and ``val/`` class folders, ``boxes.csv``, ``dataset.json``.

    The folder appears complete or not at all (built beside it, then renamed). ``quiet``: no progress display.

    Returns:
        The ``dataset.json`` content (class names, counts, size, seed).
    """
    opts = options or ReferenceOptions()
    # Locked beside the folder, not in it: the folder itself is swapped at the end.
    with output_lock(out, None, beside=True):
        return _write_reference_dataset(Path(out), opts, quiet=quiet)


def _write_reference_dataset(out: Path, opts: ReferenceOptions, *, quiet: bool) -> dict:
    _check_replaceable(out, opts)
    tmp = _fresh_build_folder(out)
    names = list(TASKS[opts.task][: opts.classes])
    try:
        rows = _draw_images(tmp, names, opts, quiet=quiet)
        info = _write_index(tmp, names, rows, opts)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _check_replaceable(out: Path, opts: ReferenceOptions) -> None:
    """Refuse an ``out`` that is not a folder, or one that holds more than an earlier make-dataset wrote."""
    if out.exists() and not out.is_dir():  # never replaced, not even with --overwrite: it is not a dataset
        raise XrayError(f"{out}: exists and is not a folder; choose another name")
    # --overwrite replaces only a dataset this command made (its dataset.json), never another folder
    if earlier_output(out, None, command="make-dataset", marker="dataset.json", resume=None, overwrite=opts.overwrite):
        # the whole folder is swapped out, so a file someone added beside the splits would go with it
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ("train", "val", "boxes.csv", "dataset.json"))
        if foreign:
            raise XrayError(f"{out}: also holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, "
                            "which make-dataset did not write; move them away or choose another folder")


def _fresh_build_folder(out: Path) -> Path:
    """An empty hidden folder beside ``out`` to build the dataset in."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise XrayError(f"{out}: cannot create ({e.strerror})") from None
    return tmp


def _draw_images(tmp: Path, names: list[str], opts: ReferenceOptions, *, quiet: bool) -> list[list[str]]:
    """Draw every split's images into ``tmp``; returns the ``boxes.csv`` rows (path, split, label, box)."""
    cat = Image.open(bundled_cat()).convert("RGB")
    cat = cat.resize((cat.width * SUPERSAMPLE // 2, cat.height * SUPERSAMPLE // 2), Image.BILINEAR)
    # The transfer task draws from its own random streams: no background or placement is reused.
    stream = [GENERATOR_VERSION] if opts.task == "reference" else [GENERATOR_VERSION, 1]
    rows = []
    with progress("make-dataset", total=len(names) * (opts.per_class + opts.n_val), quiet=quiet) as bar:
        for split, n in (("train", opts.per_class), ("val", opts.n_val)):
            for label, shape in enumerate(names):
                folder = tmp / split / shape
                folder.mkdir(parents=True)
                bar.stage(f"{split}/{shape}", steps=0)
                for i in range(n):
                    rng = np.random.default_rng([opts.seed, SPLITS[split], label, i, *stream])
                    img, box = render(shape, opts.size, rng, opts, cat)
                    rel = f"{split}/{shape}/{shape}_{i:05d}.png"
                    (tmp / rel).write_bytes(_png_bytes(img))
                    rows.append([rel, split, shape, *(f"{v:.5f}" for v in box)])
                    bar.advance()
    return rows


def _write_index(tmp: Path, names: list[str], rows: list[list[str]], opts: ReferenceOptions) -> dict:
    """Write ``boxes.csv`` and ``dataset.json`` into ``tmp``; returns the latter's content."""
    with open(tmp / "boxes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "split", "label", "x0", "y0", "x1", "y1"])
        w.writerows(rows)
    info = {
        "name": "resnet-xray reference task (offline ImageNet stand-in)",
        "generator_version": GENERATOR_VERSION,
        "classes": names,
        "train_per_class": opts.per_class,
        "val_per_class": opts.n_val,
        "box_format": "x0,y0,x1,y1 as fractions of width and height",
        **{k: v for k, v in asdict(opts).items()
           if k not in ("classes", "per_class", "val_per_class", "overwrite") and not (k == "task" and v == "reference")},
    }
    (tmp / "dataset.json").write_text(json.dumps(info, indent=2))
    return info


def _swap_in(tmp: Path, out: Path) -> None:
    """Put the finished folder at ``out``, replacing an earlier one whole."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)


@dataclass
class DatasetResult:
    info: dict[str, Any]  # dataset.json: classes, per-class counts, size, generator version, task ...
    out: Path

    def to_dict(self) -> dict[str, Any]:
        # generated images, no model: the provenance object says so, as in every --json
        return {**self.info, "out": str(self.out), "weights": WeightsInfo.none("no model: a generated dataset").to_dict()}
