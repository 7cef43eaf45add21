"""The offline reference task: deterministic files, ImageFolder layout, boxes that fit the objects."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from resnet_xray.cli import main
from resnet_xray.datasets import SHAPES, ReferenceOptions, make_reference_dataset
from resnet_xray.errors import XrayError


def _digest(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref") / "data"
    info = make_reference_dataset(root, ReferenceOptions(classes=3, per_class=4, val_per_class=2, size=48, seed=7))
    return root, info


def test_layout_counts_and_metadata(small):
    root, info = small
    assert info["classes"] == list(SHAPES[:3])
    for split, n in (("train", 4), ("val", 2)):
        for c in SHAPES[:3]:
            files = sorted((root / split / c).glob("*.png"))
            assert len(files) == n
            with Image.open(files[0]) as im:
                assert im.size == (48, 48) and im.mode == "RGB"
    assert json.loads((root / "dataset.json").read_text())["size"] == 48
    rows = list(csv.DictReader(open(root / "boxes.csv")))
    assert len(rows) == 3 * (4 + 2)
    assert {r["path"] for r in rows} == {p.relative_to(root).as_posix() for p in root.rglob("*.png")}


def test_same_seed_same_bytes_other_seed_differs(small, tmp_path):
    root, _ = small
    again = tmp_path / "again"
    make_reference_dataset(again, ReferenceOptions(classes=3, per_class=4, val_per_class=2, size=48, seed=7))
    assert _digest(again) == _digest(root)
    other = tmp_path / "other"
    make_reference_dataset(other, ReferenceOptions(classes=3, per_class=4, val_per_class=2, size=48, seed=8))
    a, b = _digest(root), _digest(other)
    assert sum(a[k] != b[k] for k in a if k.endswith(".png")) == len([k for k in a if k.endswith(".png")])


def test_boxes_are_valid_and_vary(small):
    root, _ = small
    rows = list(csv.DictReader(open(root / "boxes.csv")))
    boxes = np.array([[float(r[k]) for k in ("x0", "y0", "x1", "y1")] for r in rows])
    assert (boxes >= 0).all() and (boxes <= 1).all()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    # Objects are 28-60% of the side (rotation and stretch move the tight box a little).
    assert (w > 0.1).all() and (h > 0.1).all() and (w < 0.9).all() and (h < 0.9).all()
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert centres.std(axis=0).min() > 0.05  # random positions, not all in the middle


def test_refuses_to_overwrite_without_flag(small):
    root, _ = small
    with pytest.raises(XrayError, match="--overwrite"):
        make_reference_dataset(root, ReferenceOptions(classes=3, per_class=1, size=48))


@pytest.mark.parametrize("argv", [["--classes", "1"], ["--classes", "11"], ["--size", "16"], ["--per-class", "0"]])
def test_cli_bad_flags_exit_2(tmp_path, capsys, argv):
    assert main(["make-dataset", str(tmp_path / "d"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("resnet-xray: error:")
    assert not (tmp_path / "d").exists()
