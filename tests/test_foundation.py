"""The shared input/output pieces: one batching loop, one writable-path check."""

from __future__ import annotations

import pytest

from resnet_xray.atomic import check_writable, writable_dir
from resnet_xray.errors import XrayError
from resnet_xray.image import Preprocessing, image_batches, load_batch


def test_image_batches_stream_in_order_and_collect_skipped(image_dir):
    skipped: list = []
    pre = Preprocessing(resize=40, crop=32)
    batches = list(image_batches([image_dir], pre, 2, skipped=skipped))
    assert [len(p) for p, _ in batches] == [2, 1]
    assert [tuple(x.shape) for _, x in batches] == [(2, 3, 32, 32), (1, 3, 32, 32)]
    assert [p.name for p, _ in batches for p in p] == ["a.png", "b_gray.jpg", "c_palette.png"]
    assert sorted(s.path.rsplit("/", 1)[-1] for s in skipped) == ["empty.jpg", "notes.png", "truncated.jpg"]


def test_load_batch_is_every_readable_image_at_once(image_dir):
    names, x, skipped = load_batch([image_dir], Preprocessing(resize=40, crop=32))
    assert len(names) == x.shape[0] == 3 and len(skipped) == 3
    with pytest.raises(XrayError, match="no readable images"):
        load_batch([image_dir / "notes.png"], Preprocessing())


def test_check_writable_files_and_folders(tmp_path):
    assert check_writable(tmp_path / "new" / "x.onnx") == tmp_path / "new" / "x.onnx"
    assert (tmp_path / "new").is_dir() and not list((tmp_path / "new").iterdir())  # the probe is gone
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for call, words in [
        (lambda: check_writable(blocker / "x.png"), "cannot create directory"),
        (lambda: check_writable(tmp_path), "is a directory"),
        (lambda: check_writable(tmp_path / "chart.jpg", suffixes=(".png", "")), "use a .png name"),
        (lambda: writable_dir(blocker), "not a directory"),
    ]:
        with pytest.raises(XrayError, match=words) as e:
            call()
        assert str(e.value).startswith("-o ")
    assert writable_dir(tmp_path / "out") == tmp_path / "out"
