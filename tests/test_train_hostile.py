"""Hostile input to training and dataset folders: unreadable folders, loss weights, full disks, odd output paths."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from functools import partial
from pathlib import Path

import pytest
import torch

from resnet_xray.cli import main
from resnet_xray.datasets import ReferenceOptions
from resnet_xray.errors import XrayError
from resnet_xray.image import ImageStream, Preprocessing, UnreadableFolderError, folder_images
from resnet_xray.model import ModelMeta, build_model, save_checkpoint
from resnet_xray.options import OptionError
from resnet_xray.train import finetune as F
from resnet_xray.train.data import EmptyClassWarning, find_splits, make_loaders
from resnet_xray.train.finetune import TrainingFailed, fit
from resnet_xray.train.recipe import FinetuneOptions

from .conftest import finetune_options

SIZE = 32
TINY = ReferenceOptions(classes=3, per_class=4, val_per_class=2, size=SIZE, seed=1)  # the `tiny` fixture's dataset
_opts = partial(finetune_options, epochs=1, optimizer="sgd", lr=0.05, warmup_epochs=0.0, recipe="classic")


def deny(monkeypatch, *folders):
    """Make listing these folders fail as ``chmod 000`` does for a non-root user (tests run as root)."""
    real = os.scandir
    denied = {os.path.realpath(f) for f in folders}

    def scandir(path="."):
        if os.path.realpath(os.fspath(path)) in denied:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def _model():
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=3)


# --- an unreadable class folder is an error, never a class fewer ---


def test_unreadable_class_folder_is_refused_naming_it(tiny, monkeypatch):
    deny(monkeypatch, tiny / "val" / "triangle")
    with pytest.raises(UnreadableFolderError, match=r"val/triangle: cannot read this folder \(Permission denied\)"):
        find_splits(tiny)
    with pytest.raises(XrayError, match="pass --skip-unreadable"):
        make_loaders(tiny, batch_size=4, workers=0, skip_flag="--skip-unreadable")
    deny(monkeypatch, tiny / "train" / "circle")  # a training class would have vanished from the model
    with pytest.raises(UnreadableFolderError, match="train/circle"):
        find_splits(tiny)


def test_skip_unreadable_goes_on_and_lists_the_folder(tiny, monkeypatch):
    deny(monkeypatch, tiny / "val" / "triangle")
    data = make_loaders(tiny, batch_size=4, workers=0, skip_unreadable=True)
    assert data.class_names == ["circle", "square", "triangle"]  # the class list comes from train/
    assert [(s.path, s.reason) for s in data.skipped] == [(str(tiny / "val" / "triangle"), "folder cannot be read (Permission denied)")]
    assert data.info["val_images"] == 4
    deny(monkeypatch, tiny / "train" / "triangle")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = make_loaders(tiny, batch_size=4, workers=0, skip_unreadable=True)
    assert data.class_names == ["circle", "square"]
    assert any(issubclass(w.category, EmptyClassWarning) and "no readable images" in str(w.message) for w in caught)


def test_the_one_folder_listing_refuses_an_unreadable_subfolder(tmp_path, tiny, monkeypatch):
    # classify, evaluate and quantize calibration list folders through folder_images / ImageStream
    shutil.copytree(tiny / "val", tmp_path / "val")
    deny(monkeypatch, tmp_path / "val" / "square")
    with pytest.raises(UnreadableFolderError, match="val/square"):
        ImageStream([tmp_path / "val"])
    from resnet_xray.deploy.quantize import list_images

    with pytest.raises(UnreadableFolderError, match="val/square"):
        list_images(tmp_path / "val", "--calib")
    stream = ImageStream([tmp_path / "val"], skip_unreadable=True)
    assert len(stream) == 4 and [s.path for s in stream.skipped] == [str(tmp_path / "val" / "square")]
    assert folder_images(tmp_path / "val" / "circle") == sorted((tmp_path / "val" / "circle").iterdir())


def test_finetune_cli_refuses_an_unreadable_class_folder(tiny, tmp_path, monkeypatch, capsys):
    deny(monkeypatch, tiny / "train" / "square")
    rc = main(["finetune", str(tiny), "--out", str(tmp_path / "ft"), "--arch", "resnet18", "--weights", "random",
               "--epochs", "1", "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "train/square: cannot read this folder" in err[0] and "--skip-unreadable" in err[0]
    assert not (tmp_path / "ft" / "best.pt").exists()


@pytest.mark.slow  # trains and writes ResNet-18 checkpoints: over 10 s on a busy 2-CPU machine
def test_finetune_cli_skip_unreadable_trains_and_says_what_it_left_out(tiny, tmp_path, monkeypatch, capsys):
    deny(monkeypatch, tiny / "val" / "triangle")
    rc = main(["finetune", str(tiny), "--out", str(tmp_path / "ft"), "--arch", "resnet18", "--weights", "random",
               "--epochs", "1", "--batch-size", "4", "--workers", "0", "--recipe", "classic", "--no-progress",
               "--skip-unreadable"])
    out = capsys.readouterr().out
    assert rc == 0 and (tmp_path / "ft" / "best.pt").exists()
    assert f"  {tiny / 'val' / 'triangle'}: folder cannot be read (Permission denied)" in out.splitlines()
    assert "triangle - (no val images)" in out  # not "triangle 0%"


def _nobody_can_run_python() -> bool:
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                            "import resnet_xray"], capture_output=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return probe.returncode == 0


@pytest.mark.slow
def test_chmod_000_class_folder_as_another_user(tiny):
    if not _nobody_can_run_python():
        pytest.skip("needs root, setpriv and a Python that user nobody can run")
    top = Path(tempfile.mkdtemp(prefix="rx-unreadable-"))  # pytest's own tmp folders are private to root
    try:
        top.chmod(0o755)
        data = top / "data"
        shutil.copytree(tiny, data)
        (data / "val" / "triangle").chmod(0o000)
        code = f"from resnet_xray.train.data import find_splits; find_splits({str(data)!r})"
        p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert p.returncode != 0 and "UnreadableFolderError" in p.stderr and "val/triangle" in p.stderr
    finally:
        shutil.rmtree(top)


# --- loss weights, and runs that never step ---


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0])
@pytest.mark.parametrize("head", ["class", "box"])
def test_loss_weights_must_be_finite_and_not_negative(head, value):
    with pytest.raises(OptionError, match="must be a finite number, 0 or more") as e:
        FinetuneOptions(multitask=True, loss_weights={"class": 1.0, "box": 1.0, head: value})
    assert e.value.option == f"{head}_weight"
    FinetuneOptions(multitask=True, loss_weights={"class": 1.0, "box": 1.0, head: 0.0})  # one head left untrained
    with pytest.raises(OptionError, match="at least one loss weight must be above 0"):
        FinetuneOptions(multitask=True, loss_weights={"class": 0.0, "box": 0.0})


@pytest.mark.parametrize("value", ["nan", "-1"])
def test_class_weight_flag_is_refused_in_one_line(tiny, tmp_path, capsys, value):
    rc = main(["finetune", str(tiny), "--out", str(tmp_path / "ft"), "--multitask", "--class-weight", value,
               "--arch", "resnet18", "--weights", "random", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"resnet-xray: error: --class-weight {float(value)}: must be a finite number, 0 or more"]


def test_a_run_that_never_steps_fails_and_publishes_nothing(tiny, tmp_path):
    # Every loss non-finite, but fewer in a row per epoch than max_nonfinite: each epoch used to end,
    # validate the untrained weights, and publish them as best.pt.
    model = _model()
    with torch.no_grad():
        model.fc.bias[0] = float("nan")
    conv = model.conv1.weight.clone()
    with pytest.raises(TrainingFailed, match="every loss was non-finite .* no optimiser step was taken") as e:
        fit(model, make_loaders(tiny, batch_size=4, workers=0), _opts(epochs=2, max_nonfinite=100), out_dir=tmp_path)
    assert e.value.exit_code == 1
    torch.testing.assert_close(model.conv1.weight, conv)
    assert not (tmp_path / "best.pt").exists() and not (tmp_path / "last.pt").exists()


def test_finetune_cli_exits_1_when_no_step_was_taken(tiny, tmp_path, monkeypatch, capsys):
    real = F._loss

    def nan_loss(*a, **k):
        total, parts = real(*a, **k)
        return total * float("nan"), parts

    monkeypatch.setattr(F, "_loss", nan_loss)
    rc = main(["finetune", str(tiny), "--out", str(tmp_path / "ft"), "--arch", "resnet18", "--weights", "random",
               "--epochs", "1", "--batch-size", "8", "--workers", "0", "--recipe", "classic", "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("resnet-xray:")]
    assert rc == 1 and len(err) == 1 and "no optimiser step was taken" in err[0]
    assert not (tmp_path / "ft" / "best.pt").exists()


# --- a full disk, and an output path that is a file ---


@contextlib.contextmanager
def disk_fills_at(nbytes: int):
    """Writes past ``nbytes`` in any file fail in the kernel (EFBIG), as they do on a full disk (ENOSPC).

    A real failed write, so torch.save meets it inside its C++ zip writer; a mounted tiny tmpfs
    gives ENOSPC the same way but needs privileges a test must not assume.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def test_checkpoint_on_a_full_disk_is_one_line_naming_the_file(tmp_path):
    model = _model()
    meta = ModelMeta("resnet18", "random", ["a", "b", "c"], Preprocessing(), False)
    with disk_fills_at(1 << 20), pytest.raises(XrayError, match=r"best\.pt: cannot write \(File too large\)"):
        save_checkpoint(tmp_path / "best.pt", model, meta)  # torch.save: RuntimeError "unexpected pos ..."
    assert list(tmp_path.iterdir()) == []  # no temp file, no half-written checkpoint


@pytest.mark.slow  # trains and writes ResNet-18 checkpoints: over 10 s on a busy 2-CPU machine
def test_finetune_and_resume_on_a_full_disk(tiny, tmp_path):
    data = make_loaders(tiny, batch_size=4, workers=0)
    fit(_model(), data, _opts(epochs=2, stop_after_steps=1), out_dir=tmp_path)
    before = (tmp_path / "last.pt").read_bytes()
    with disk_fills_at(1 << 20), pytest.raises(XrayError, match=r"last\.pt: cannot write \(File too large\)"):
        fit(_model(), data, _opts(epochs=2, stop_after_steps=2), out_dir=tmp_path, resume=True)
    assert (tmp_path / "last.pt").read_bytes() == before  # the previous checkpoint is intact
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_make_dataset_onto_an_existing_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("keep me")
    rc = main(["make-dataset", str(target), "--classes", "2", "--per-class", "1", "--size", "32", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"resnet-xray: error: {target}: exists and is not a folder; choose another name"]
    assert target.read_text() == "keep me"


def test_tensorboard_logs_on_a_full_disk_are_one_line(tmp_path, capfd):
    pytest.importorskip("torch.utils.tensorboard")
    import threading

    from resnet_xray.train.metrics import TensorBoardLog

    with disk_fills_at(16), pytest.raises(XrayError, match=r"tb: cannot write TensorBoard logs \(File too large\)"):
        TensorBoardLog(tmp_path / "tb")
    for t in threading.enumerate():  # its writer thread prints its own traceback, if any, as it ends
        if type(t).__module__.startswith("tensorboard."):
            t.join(10)
    assert "Traceback" not in capfd.readouterr().err
