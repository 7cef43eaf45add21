"""A box head's output back on the original photo: undo Resize + CenterCrop, print it, draw it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from ..atomic import atomic_path
from ..errors import XrayError
from ..image import Preprocessing, load_image


def box_to_image(box: Sequence[float], image_size: tuple[int, int], pre: Preprocessing) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` as fractions of the network's crop -> pixels of the original image.

    The crop came from resizing the shorter side to ``pre.resize`` and cutting the
    centre ``pre.crop`` square, so this scales and shifts back by the same amounts.
    """
    w, h = image_size
    s = pre.resize / min(w, h)
    rw, rh = w * s, h * s
    ox, oy = (rw - pre.crop) / 2, (rh - pre.crop) / 2
    x0, y0, x1, y1 = (float(v) * pre.crop for v in box)
    return ((x0 + ox) / s, (y0 + oy) / s, (x1 + ox) / s, (y1 + oy) / s)


def box_to_crop(box: Sequence[float], image_size: tuple[int, int], pre: Preprocessing) -> tuple[float, float, float, float]:
    """The inverse of :func:`box_to_image`: a box in fractions of the original image -> fractions of the crop."""
    w, h = image_size
    s = pre.resize / min(w, h)
    ox, oy = (w * s - pre.crop) / 2, (h * s - pre.crop) / 2
    x0, y0, x1, y1 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
    out = [(x0 * s - ox) / pre.crop, (y0 * s - oy) / pre.crop, (x1 * s - ox) / pre.crop, (y1 * s - oy) / pre.crop]
    return tuple(min(1.0, max(0.0, v)) for v in out)


def describe_box(box: Sequence[float], image_path: str | Path, pre: Preprocessing) -> str:
    with Image.open(image_path) as im:
        size = im.size
    px = box_to_image(box, size, pre)
    return f"({px[0]:.0f}, {px[1]:.0f}) - ({px[2]:.0f}, {px[3]:.0f}) px [x0 y0 x1 y1]"


def draw_box(image_path: str | Path, box: Sequence[float], label: str, pre: Preprocessing, out_path: str | Path) -> Path:
    """Save the image with the predicted box and label drawn on it (written atomically)."""
    img = load_image(image_path)
    x0, y0, x1, y1 = box_to_image(box, img.size, pre)
    draw = ImageDraw.Draw(img)
    width = max(2, round(min(img.size) / 100))
    draw.rectangle([x0, y0, x1, y1], outline=(255, 40, 40), width=width)
    tw = draw.textlength(label)
    ty = y0 - 12 if y0 >= 12 else y1 + 2
    draw.rectangle([x0, ty, x0 + tw + 4, ty + 11], fill=(255, 40, 40))
    draw.text((x0 + 2, ty), label, fill=(255, 255, 255))
    out_path = Path(out_path)
    with atomic_path(out_path, "--draw") as tmp:
        img.save(tmp)
    return out_path


def draw_predictions(predictions, pre: Preprocessing, out_dir: str | Path) -> list[Path]:
    """One ``<name>_box.png`` per prediction that has a ``box`` head output.

    Raises:
        XrayError: the model has no box head, or ``out_dir`` cannot be created.
    """
    out = Path(out_dir)
    if predictions and not any("box" in p.heads for p in predictions):
        raise XrayError("--draw: this model has no box head (train one with finetune --multitask)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise XrayError(f"--draw {out}: cannot create ({e.strerror})") from None
    written = []
    for p in predictions:
        if "box" in p.heads:
            label = f"{p.topk[0]['label']} {p.topk[0]['prob']:.0%}"
            written.append(draw_box(p.image, p.heads["box"], label, pre, out / f"{Path(p.image).stem}_box.png"))
    return written
