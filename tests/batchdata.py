"""A small model and a few hundred generated images for the batch-classify tests (tests/test_batch*.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnet_xray.interface import ReplacedClassifier, reset_classifier
from resnet_xray.model import build_model, load_model, save_checkpoint

BAD = ("broken/empty.jpg", "broken/notes.png")  # unreadable on purpose: recorded as errors


def small_checkpoint(path: Path, seed: int = 0) -> Path:
    """resnet18 with a 5-class head at 32 px: a real ResNet that classifies hundreds of images a second."""
    torch.manual_seed(seed)
    _, meta = load_model("resnet18", "random", seed=seed, progress=False)
    model = reset_classifier(build_model("resnet18"), 5).eval()
    meta = replace(meta.with_change(ReplacedClassifier(5)), class_names=[f"c{i}" for i in range(5)],
                   preprocessing=meta.preprocessing.scaled_to(32, "ImageNet pipeline at 32 px"))
    return save_checkpoint(path, model, meta)


def image_tree(root: Path, n: int = 300) -> list[str]:
    """``n`` small PNG/JPEG images in nested folders plus the BAD files; returns every path as the walk yields it."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        folder = root / f"part{i % 3}" / (f"sub{i % 2}" if i % 5 else "")
        folder.mkdir(parents=True, exist_ok=True)
        p = folder / f"img{i:04d}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    (root / "broken").mkdir()
    (root / BAD[0]).write_bytes(b"")
    (root / BAD[1]).write_text("this is not a picture")
    return paths + [str(root / b) for b in BAD]


def read_jsonl(path: Path) -> list[dict]:
    """Every line of ``path`` as a record; fails on a torn or malformed line."""
    data = Path(path).read_bytes()
    assert data == b"" or data.endswith(b"\n"), "the last line is torn"
    return [json.loads(line) for line in data.decode().splitlines()]


def assert_exactly_once(records: list[dict], expected: list[str]) -> None:
    paths = [r["path"] for r in records]
    assert len(paths) == len(set(paths)), "an image was recorded twice"
    assert set(paths) == set(expected)
