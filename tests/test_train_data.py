"""The input pipeline: splits, corrupt-file skipping, reproducible augmentation, resumable sampling."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from resnet_xray.datasets import ReferenceOptions
from resnet_xray.errors import XrayError
from resnet_xray.train.data import EmptyClassWarning, EpochSampler, make_loaders

SIZE = 32
TINY = ReferenceOptions(classes=3, per_class=6, val_per_class=3, size=SIZE, seed=3)  # the `tiny` fixture's dataset


@pytest.fixture
def with_bad_files(tiny, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(tiny, root)
    good = next((root / "train" / "circle").glob("*.png")).read_bytes()
    (root / "train" / "circle" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "train" / "square" / "notes.png").write_text("not an image")
    return root


def test_train_val_folders_and_class_only_split(tiny, tmp_path):
    data = make_loaders(tiny, batch_size=4, workers=0)
    assert data.class_names == ["circle", "square", "triangle"]
    assert (data.info["train_images"], data.info["val_images"]) == (18, 9)
    assert data.preprocessing.crop == SIZE and data.preprocessing.resize == SIZE
    flat = tmp_path / "flat"
    shutil.copytree(tiny / "train", flat)
    split = make_loaders(flat, batch_size=4, workers=0, seed=5)
    assert (split.info["train_images"], split.info["val_images"]) == (15, 3)  # 20% of each class held out
    train_files = {p for p, _ in split.train.dataset.samples}
    assert not train_files & {p for p, _ in split.val.dataset.samples}
    assert make_loaders(flat, batch_size=4, workers=0, seed=5).val.dataset.samples == split.val.dataset.samples


def test_bad_dataset_folders_are_user_errors(tiny, tmp_path):
    with pytest.raises(XrayError, match="no such dataset folder"):
        make_loaders(tmp_path / "missing")
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(XrayError, match="at least 2"), pytest.warns(EmptyClassWarning, match="only: no images"):
        make_loaders(tmp_path / "one")
    shutil.copytree(tiny, tmp_path / "nobox")
    (tmp_path / "nobox" / "boxes.csv").unlink()
    with pytest.raises(XrayError, match="boxes.csv"):
        make_loaders(tmp_path / "nobox", multitask=True)


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_images_are_skipped_and_logged_once(with_bad_files, caplog, workers):
    data = make_loaders(with_bad_files, batch_size=4, workers=workers)
    caplog.set_level(logging.WARNING, logger="resnet_xray.train.data")
    seen = 0
    for _ in range(2):  # two epochs: the same bad files come round again
        for x, y in data.train:
            assert torch.isfinite(x).all() and len(x) == len(y)
            seen += len(x)
    assert sorted(s.path.rsplit("/", 1)[-1] for s in data.skipped) == ["notes.png", "truncated.png"]
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in data.skipped}
    assert "not an image" in reasons["notes.png"] and "truncated" in reasons["truncated.png"]
    logged = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(logged) == 2  # once per file, not once per epoch
    # 20 files, 2 unreadable, drop_last of the ragged batch: every readable image in a full batch was used.
    assert seen <= 2 * 18 and seen >= 2 * 18 - 2 * 4


def test_augmentation_is_reproducible_and_worker_independent(tiny):
    a = make_loaders(tiny, batch_size=4, workers=0, seed=11)
    b = make_loaders(tiny, batch_size=4, workers=1, seed=11)
    xa, ya = next(iter(a.train))
    xb, yb = next(iter(b.train))
    torch.testing.assert_close(xa, xb)
    torch.testing.assert_close(ya, yb)
    # A new epoch reshuffles and re-augments.
    xa2, _ = next(iter(a.train))
    assert not torch.equal(xa, xa2)


def test_sampler_skip_resumes_mid_epoch(tiny):
    ds = make_loaders(tiny, batch_size=4, workers=0).train.dataset
    s = EpochSampler(ds, seed=4)
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(3, skip=8)
    assert list(s) == full[8:]
    assert all(e == 3 for _, e in full)
    s.set_epoch(0)
    s2 = EpochSampler(ds, num_replicas=2, rank=1, seed=4)
    s2.set_epoch(0)
    shard0 = EpochSampler(ds, num_replicas=2, rank=0, seed=4)
    shard0.set_epoch(0)
    assert sorted(i for i, _ in list(shard0) + list(s2)) == sorted(i for i, _ in list(s))


def test_bench_data_cli_reports_rates_and_wait(tiny, capsys):
    import json

    from resnet_xray.cli import main

    assert main(["bench-data", str(tiny), "--arch", "resnet18", "--batch-size", "4", "--workers", "0", "--steps", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["workers"] == 0 and r["image_size"] == SIZE
    for k in ("loader_images_per_s", "step_images_per_s", "loop_images_per_s"):
        assert r[k] > 0
    assert 0 <= r["data_wait_fraction"] < 1


def test_workers_fall_back_to_the_main_process_when_a_fork_unsafe_runtime_is_loaded(tiny, monkeypatch, caplog):
    import sys
    import types

    from resnet_xray.train import data as data_mod

    monkeypatch.setitem(sys.modules, "openvino", sys.modules.get("openvino") or types.ModuleType("openvino"))
    with caplog.at_level("WARNING", logger=data_mod.__name__):
        loaders = make_loaders(tiny, batch_size=4, workers=2, seed=11)
    assert loaders.train.num_workers == 0 and loaders.val.num_workers == 0
    assert "openvino" in caplog.text and "--workers" in caplog.text
    x, _ = next(iter(loaders.train))  # and it still loads
    assert x.shape[0] == 4


def test_decoded_image_cache_reads_each_file_once_and_changes_no_batch(tiny, monkeypatch):
    from resnet_xray.train import data as data_mod

    def two_epochs(loaders):
        batches = []
        for epoch in range(2):
            loaders.train.sampler.set_epoch(epoch)
            batches += list(loaders.train)
        return batches

    reads: list[str] = []
    real = data_mod.load_image
    monkeypatch.setattr(data_mod, "load_image", lambda p: reads.append(str(p)) or real(p))
    cached = make_loaders(tiny, batch_size=4, workers=0, seed=11)  # workers 0: the cache is on
    assert cached.train.dataset.cache_bytes > 0
    got = two_epochs(cached)
    assert len(reads) == len(set(reads)) == len(cached.train.dataset._cache) > 0  # each file read once, then cached
    assert sum(len(y) for _, y in got) > len(reads)  # the second epoch was served from the cache
    # No forked workers to compare with: onnxruntime/openvino may be loaded here, and a fork would crash.
    fresh = make_loaders(tiny, batch_size=4, workers=0, seed=11)
    fresh.train.dataset.cache_bytes = 0
    reads.clear()
    want = two_epochs(fresh)
    assert len(reads) == sum(len(y) for _, y in want)  # uncached: a read for every image of every batch
    assert len(got) == len(want)
    for (xa, ya), (xb, yb) in zip(got, want):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)  # re-augmented from the cached image, bit for bit


def test_decoded_image_cache_stops_at_its_byte_cap(tiny):
    from resnet_xray.train.data import FolderDataset, scan_split

    samples, _ = scan_split(tiny / "train")
    one = SIZE * SIZE * 3
    ds = FolderDataset(samples, lambda img: img, cache_bytes=2 * one + one // 2)
    for i in range(len(ds)):
        ds[i]
    assert len(ds._cache) == 2 and ds._cached == 2 * one


def test_default_workers_follow_the_cpu_count(tiny, monkeypatch):
    from resnet_xray.train import data as data_mod

    # Other tests may have loaded onnxruntime/openvino (they force workers 0); no loader is iterated here, so no fork.
    monkeypatch.setattr(data_mod, "FORK_UNSAFE_MODULES", ())
    monkeypatch.setattr(data_mod, "usable_cpus", lambda: 2)
    assert data_mod.default_workers() == 0
    auto = make_loaders(tiny, batch_size=4, seed=0)
    assert auto.train.num_workers == 0 and auto.info["workers"] == 0 and auto.train.dataset.cache_bytes > 0
    monkeypatch.setattr(data_mod, "usable_cpus", lambda: 8)
    assert data_mod.default_workers() == 2
    assert make_loaders(tiny, batch_size=4, seed=0).train.num_workers == 2
