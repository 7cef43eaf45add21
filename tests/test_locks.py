"""One writer per output folder: the second gets one line and exit 2, nothing is lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from resnet_xray.atomic import stale_temporaries
from resnet_xray.datasets import ReferenceOptions, make_reference_dataset
from resnet_xray.errors import XrayError
from resnet_xray.locks import OWNER_NAME, lock_paths, output_lock
from resnet_xray.model import load_model

from .lockholder import held_elsewhere


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def test_second_holder_is_refused_with_one_line_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    with held_elsewhere(out) as proc:
        with pytest.raises(XrayError) as e:
            with output_lock(out, "--out"):
                pass
        msg = str(e.value)
        assert "--out" in msg and str(out) in msg and "in use" in msg and f"pid {proc.pid}" in msg and "\n" not in msg
    # The holder was SIGKILLed: the OS released its lock, no stale lock remains.
    with output_lock(out, "--out") as got:
        assert got == out
        with output_lock(out, "--out"):  # re-entrant within a process
            pass
    assert not (out / OWNER_NAME).exists()


def test_live_runs_temp_files_are_never_stale(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
        (tmp_path / f".last.tmp-{live.pid}.pt").write_bytes(b"in progress")
        (tmp_path / f".last.tmp-{dead}.pt").write_bytes(b"left by a killed run")
        assert [p.name for p in stale_temporaries(tmp_path, ".pt")] == [f".last.tmp-{dead}.pt"]
    finally:
        live.kill()
        live.wait()


def test_commands_take_the_lock_before_any_work(tmp_path):
    from resnet_xray.pruning.loop import PruneOptions, prune
    from resnet_xray.reporting import ReportOptions, build_report

    model, meta = load_model("resnet18", "random")
    out = tmp_path / "busy"
    with held_elsewhere(out):
        with pytest.raises(XrayError, match="in use"):
            prune(model, meta, PruneOptions(out=str(out), steps=1, latency_repeats=1))
        with pytest.raises(XrayError, match="in use"):
            build_report("nonexistent.png", model, meta, ReportOptions(out_dir=out))
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in lock_paths(out))
    ds = tmp_path / "ds"
    with held_elsewhere(ds, beside=True):
        with pytest.raises(XrayError, match="in use"):
            make_reference_dataset(ds, ReferenceOptions(classes=2, per_class=2, val_per_class=1, size=32))
    assert not ds.exists()


def _finetune_cmd(data, out, *extra):
    return [sys.executable, "-m", "resnet_xray", "finetune", str(data), "--out", str(out), "--arch", "resnet18",
            "--weights", "random", "--batch-size", "4", "--workers", "0", "--lr", "0.01", "--no-progress",
            "--device", "cpu", "--checkpoint-every", "1", *extra]


# A second CLI run whose imports are done before it is released: the lock check then happens
# within a second of the release, whatever the machine's load, so the test does not race.
_PRIMED = ("import sys\nimport resnet_xray.cli, resnet_xray.train.job\nsys.stdin.readline()\n"
           "sys.exit(resnet_xray.cli.main(sys.argv[1:]))\n")


@pytest.mark.slow
def test_two_finetunes_on_one_folder(tmp_path):
    data = tmp_path / "data"
    make_reference_dataset(data, ReferenceOptions(classes=3, per_class=8, val_per_class=3, size=32, seed=2))
    out = tmp_path / "run"
    second = subprocess.Popen([sys.executable, "-c", _PRIMED, *_finetune_cmd(data, out, "--epochs", "1")[3:]], env=_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = subprocess.Popen(_finetune_cmd(data, out, "--epochs", "6"), env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not (out / "last.pt").exists():  # the first run holds the lock and is writing checkpoints
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.time() - t0 < 300
            time.sleep(0.02)
        _, second_err = second.communicate("go\n", timeout=300)
        assert first.poll() is None, "the first run ended before the second was refused; the test proved nothing"
        assert second.returncode == 2, second_err[-2000:]
        err = second_err.strip().splitlines()
        assert len(err) == 1 and "in use by another resnet-xray run" in err[0] and str(out) in err[0]
        _, first_err = first.communicate(timeout=600)
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.kill()
    assert first.returncode == 0, first_err[-2000:]
    # The first run's checkpoints are whole and its own: 6 epochs of 6 steps.
    for name in ("best.pt", "last.pt"):
        model, meta = load_model(None, out / name)
        assert meta.class_names == ["circle", "square", "triangle"]
    assert torch.load(out / "last.pt", weights_only=True)["global_step"] == 36

    # A finished run is not silently replaced; --overwrite replaces it, --resume continues it.
    again = subprocess.run(_finetune_cmd(data, out, "--epochs", "1"), env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--resume" in again.stderr and "--overwrite" in again.stderr
    assert torch.load(out / "last.pt", weights_only=True)["global_step"] == 36
    t_over = time.time()
    over = subprocess.run(_finetune_cmd(data, out, "--epochs", "1", "--overwrite"), env=_env(), capture_output=True, text=True, timeout=300)
    assert over.returncode == 0, over.stderr[-2000:]
    assert torch.load(out / "last.pt", weights_only=True)["global_step"] == 6
    assert (out / "best.pt").stat().st_mtime >= t_over - 1  # no best.pt of the earlier run left mixed in
