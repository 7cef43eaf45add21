"""kill -9 during training never leaves an unloadable checkpoint, and --resume finishes the same run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from resnet_xray.datasets import ReferenceOptions, make_reference_dataset
from resnet_xray.model import load_model
from resnet_xray.train.job import finetune
from resnet_xray.train.recipe import FinetuneOptions

pytestmark = pytest.mark.slow
EPOCHS, BATCH = 2, 4


def _cmd(data, out, *extra):
    return [sys.executable, "-m", "resnet_xray", "finetune", str(data), "--out", str(out), "--arch", "resnet18",
            "--weights", "random", "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--workers", "0",
            "--lr", "0.05", "--checkpoint-every", "1", "--no-progress", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def _wait_for_write(path, after_mtime: float, timeout: float = 180.0) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and path.stat().st_mtime_ns > after_mtime:
            return path.stat().st_mtime_ns
        time.sleep(0.01)
    raise AssertionError(f"{path} was not written within {timeout} s")


def _assert_loadable(path, class_names):
    ck = torch.load(path, map_location="cpu", weights_only=True)
    assert ck["class_names"] == class_names and "optimizer" in ck and "rng" in ck
    model, meta = load_model(None, path)
    assert meta.arch == "resnet18" and all(torch.isfinite(p).all() for p in model.parameters())
    return ck


def test_kill_9_mid_training_then_resume_matches_uninterrupted(tmp_path):
    data = tmp_path / "data"
    make_reference_dataset(data, ReferenceOptions(classes=3, per_class=8, val_per_class=3, size=32, seed=4))
    names = ["circle", "square", "triangle"]
    out = tmp_path / "run"
    last = out / "last.pt"
    mtime = 0
    kills = 0
    # Kill it twice: once just after a checkpoint lands, once while the next one is being written.
    for delay in (0.0, 0.15):
        proc = subprocess.Popen(_cmd(data, out, "--resume"), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            mtime = _wait_for_write(last, mtime)
            time.sleep(delay)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        ck = _assert_loadable(last, names)
        assert 1 <= ck["global_step"] < EPOCHS * 6
    assert kills == 2
    done = subprocess.run(_cmd(data, out, "--resume"), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stderr
    assert not list(out.glob(".*.tmp-*"))  # a killed writer's temp file is cleaned away
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == EPOCHS * 6 and len(summary["history"]) == EPOCHS

    # The same run, never interrupted, in this process with the same thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        opts = FinetuneOptions(arch="resnet18", weights="random", epochs=EPOCHS, batch_size=BATCH, workers=0, lr=0.05,
                               checkpoint_every=0, progress=False)
        finetune(data, opts, tmp_path / "straight")
    finally:
        torch.set_num_threads(threads)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(last, weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
