"""Shared fixtures: images of every awkward kind, written on the fly, an offline torch hub, a tiny dataset."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_xray.datasets import ReferenceOptions, make_reference_dataset
from resnet_xray.image import bundled_cat
from resnet_xray.train.recipe import FinetuneOptions

# The dataset of the `tiny` fixture; a test module that needs another defines its own TINY.
TINY = ReferenceOptions(classes=3, per_class=6, val_per_class=3, size=32, seed=2)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread: on a loaded 2-core machine two spinning OpenMP threads slow small models ~20x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def cat_path() -> Path:
    return bundled_cat()


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache, so nothing pretrained is 'already downloaded'."""
    hub = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(hub))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    return hub / "hub"


def gradient_image(w: int = 64, h: int = 48) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1), "RGB")


@pytest.fixture
def image_dir(tmp_path) -> Path:
    """Three good images and three bad ones, in one folder."""
    d = tmp_path / "imgs"
    d.mkdir()
    gradient_image().save(d / "a.png")
    gradient_image(80, 60).convert("L").save(d / "b_gray.jpg")
    gradient_image().convert("P").save(d / "c_palette.png")
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.png").write_text("this is not a picture")
    buf = io.BytesIO()
    gradient_image(200, 200).save(buf, "JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    return d


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, request) -> Path:
    """The reference task at its smallest (circle, square, triangle), made once per test module: the
    module's ``TINY`` options if it has them, else this file's."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    make_reference_dataset(root, getattr(request.module, "TINY", TINY), quiet=True)
    return root


def finetune_options(**kw) -> FinetuneOptions:
    """Fine-tuning options small enough for a test: resnet18 from random weights, batches of 4, no workers,
    no progress display; ``kw`` sets or overrides any field."""
    base = dict(arch="resnet18", weights="random", batch_size=4, workers=0, seed=0, progress=False)
    base.update(kw)
    return FinetuneOptions(**base)
