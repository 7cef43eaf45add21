"""Folders of images as the deployed engines take them: listed, split, labelled, batched as NumPy arrays.

Calibration (``quantize``, TensorRT, NNCF, PyTorch FX), the agreement checks and
``evaluate`` all read their images through here, so a folder is listed, split and
labelled the same way everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import XrayError
from ..image import IMAGE_EXTENSIONS, Preprocessing, Skipped, expand_inputs
from ..image import image_batches as stream_batches


def list_images(folder: str | os.PathLike, flag: str) -> list[Path]:
    p = Path(folder)
    if not p.exists():
        raise XrayError(f"{flag} {p}: no such folder")
    if not p.is_dir():
        raise XrayError(f"{flag} {p}: not a folder of images")
    files = expand_inputs([p])
    if not files:
        raise XrayError(f"{flag} {p}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
    return files


def spread(files: list[Path], n: int | None) -> list[Path]:
    """At most ``n`` of ``files``, evenly spaced: a sorted ImageFolder listing's first ``n`` would be one class."""
    if not n or len(files) <= n:
        return files
    return files[:: max(1, len(files) // n)][:n]


def split_holdout(files: list[Path], every: int) -> tuple[list[Path], list[Path]]:
    """(calibration, held-out): every ``every``-th file is held out, deterministically."""
    if every < 2 or len(files) < every:
        return files, []
    held = [f for i, f in enumerate(files) if i % every == every - 1]
    calib = [f for i, f in enumerate(files) if i % every != every - 1]
    return calib, held


def image_batches(
    files: list[Path], pre: Preprocessing, batch: int, skipped: list[Skipped], desc: str, progress: bool
) -> Iterator[tuple[list[Path], np.ndarray]]:
    """:func:`resnet_xray.image.image_batches` as the NCHW float32 arrays ONNX Runtime takes."""
    for names, x in stream_batches(files, pre, batch, skipped=skipped, progress=progress, desc=desc):
        yield names, x.numpy()


def folder_labels(files: list[Path], root: Path, class_names: list[str] | None, num_classes: int) -> tuple[list[int] | None, str]:
    """Labels from an ImageFolder layout (root/<class>/<image>), or None and why not."""
    rels = [f.relative_to(root) for f in files]
    if not rels or any(len(r.parts) != 2 for r in rels):
        return None, "not an ImageFolder layout (root/<class>/<image>)"
    dirs = sorted({r.parts[0] for r in rels})
    if len(dirs) < 2:
        return None, "only one class folder"
    if class_names and all(d in class_names for d in dirs):
        index = {d: class_names.index(d) for d in dirs}
        how = "folder names matched to the model's class names"
    elif len(dirs) == num_classes:
        index = {d: i for i, d in enumerate(dirs)}
        how = "sorted folder order (ImageFolder convention)"
    else:
        return None, f"{len(dirs)} class folders do not match the model's {num_classes} classes"
    return [index[r.parts[0]] for r in rels], how
