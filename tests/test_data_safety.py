"""Writers never destroy what they did not write: inputs, earlier good outputs, whole artefact sets.

--overwrite replaces only a folder the same command wrote and never an input; a failed or
interrupted export leaves the earlier files whole; optimize publishes one winner's set; every
writer is locked; no lock file or half-made folder is left behind.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnet_xray import api
from resnet_xray.atomic import StagedFiles, refuse_inputs, remove_stale_dirs
from resnet_xray.cli import main
from resnet_xray.errors import XrayError
from resnet_xray.image import Preprocessing
from resnet_xray.locks import file_lock, output_lock
from resnet_xray.model import ModelMeta, build_model, save_checkpoint

from .lockholder import held_elsewhere

NAMES = ["circle", "square", "triangle"]
PRE = Preprocessing(resize=72, crop=64)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    assert main(["make-dataset", str(root / "ds"), "--classes", "3", "--per-class", "2", "--val-per-class", "1", "--size", "64",
                 "--quiet"]) == 0
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3).eval()
    ckpt = save_checkpoint(root / "ft" / "best.pt", model, ModelMeta("resnet18", "random (test)", NAMES, PRE, True))
    return root, ckpt


# --- --overwrite never deletes an input or a folder another command wrote ---


def test_optimize_refuses_an_output_that_is_contains_or_lies_inside_an_input(task, tmp_path, capsys) -> None:
    root, ckpt = task
    data = root / "ds"
    before = _tree(root)
    for out, how in ((data, "is the input --data"), (ckpt.parent, "contains the input checkpoint"),
                     (data / "train" / "new", "lies inside the input --data")):
        assert main(["optimize", str(ckpt), "--data", str(data), "-o", str(out), "--overwrite"]) == 2
        assert how in _one_line(capsys)
    assert _tree(root) == before  # the dataset and the checkpoint folder are whole
    assert not (data / "train" / "new").exists()
    # a symlink to the dataset is the dataset
    (tmp_path / "link").symlink_to(data)
    with pytest.raises(XrayError, match="is the input --data"):
        refuse_inputs(tmp_path / "link", {"--data": data})


def test_overwrite_refuses_a_folder_the_command_did_not_write_and_does_not_suggest_it(task, tmp_path, capsys) -> None:
    root, ckpt = task
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for extra in (["--overwrite"], [], ["--resume"]):
        assert main(["optimize", str(ckpt), "--data", str(root / "ds"), "-o", str(other), *extra]) == 2
        line = _one_line(capsys)
        assert "not written by optimize" in line and "--overwrite" not in line
    assert (other / "notes.txt").read_text() == "mine"
    # make-dataset --overwrite replaces only a dataset it made
    assert main(["make-dataset", str(other), "--classes", "2", "--per-class", "1", "--size", "32", "--overwrite", "--quiet"]) == 2
    assert "not written by make-dataset" in _one_line(capsys)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    # nor a dataset someone has added files to (the whole folder is swapped out)
    ds = tmp_path / "ds"
    args = ["make-dataset", str(ds), "--classes", "2", "--per-class", "1", "--val-per-class", "1", "--size", "32", "--quiet"]
    assert main(args) == 0
    (ds / "notes.txt").write_text("mine")
    assert main([*args, "--overwrite"]) == 2
    assert "notes.txt" in _one_line(capsys) and (ds / "notes.txt").exists()
    (ds / "notes.txt").unlink()
    assert main([*args, "--overwrite"]) == 0
    # finetune does not write its run into its own data
    assert main(["finetune", str(root / "ds"), "--out", str(root / "ds" / "val"), "--arch", "resnet18", "--weights", "random",
                 "--overwrite"]) == 2
    assert "lies inside the input --data" in _one_line(capsys)
    # ... nor over the checkpoint it starts from
    assert main(["finetune", str(root / "ds"), "--out", str(ckpt.parent), "--arch", "resnet18", "--weights", str(ckpt),
                 "--overwrite"]) == 2
    assert "contains the input --weights" in _one_line(capsys) and ckpt.exists()


def test_optimize_overwrite_removes_only_what_optimize_wrote(task, tmp_path) -> None:
    from resnet_xray.deploy.optimize import STATE_FILE, OptimizeOptions, prepare_out

    root, _ = task
    out = tmp_path / "opt"
    (out / "work").mkdir(parents=True)
    (out / "work" / "base.fp32.onnx").write_bytes(b"old")
    (out / STATE_FILE).write_text(json.dumps({"done": {}, "options": {}}))
    (out / "model.xml").write_text("old winner")
    (out / "notes.txt").write_text("a person's file")
    with pytest.raises(XrayError, match="--resume to continue it or --overwrite"):
        prepare_out(OptimizeOptions(data=str(root / "ds"), out=str(out)))
    prepare_out(OptimizeOptions(data=str(root / "ds"), out=str(out), overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# --- optimize: resumable from its first stage; a changed --engines is refused; one winner published ---


def test_optimize_writes_its_state_at_the_start_and_refuses_changed_engines_on_resume(task, tmp_path, monkeypatch) -> None:
    import resnet_xray.pruning.loop as loop
    from resnet_xray.deploy.optimize import STATE_FILE, OptimizeOptions, optimize

    root, ckpt = task

    def killed(*a, **k):
        raise KeyboardInterrupt  # as if killed in the prune stage

    monkeypatch.setattr(loop, "prune", killed)
    opts = OptimizeOptions(data=str(root / "ds"), out=str(tmp_path / "o"), target_macs=0.5, engines=("ort",), progress=False)
    with pytest.raises(KeyboardInterrupt):
        optimize(str(ckpt), opts, log=lambda s: None)
    assert json.loads((tmp_path / "o" / STATE_FILE).read_text())["options"]["engines"] == ["ort"]
    with pytest.raises(KeyboardInterrupt):  # --resume is accepted and goes on to the prune stage again
        optimize(str(ckpt), OptimizeOptions(**{**opts.__dict__, "resume": True}), log=lambda s: None)
    with pytest.raises(XrayError, match=r"was started with --engines \['ort'\]"):
        optimize(str(ckpt), OptimizeOptions(**{**opts.__dict__, "resume": True, "engines": ("openvino",)}), log=lambda s: None)


def test_optimize_publishing_removes_an_earlier_winner_on_another_engine(task, tmp_path) -> None:
    from resnet_xray.deploy.optimize import Candidate, OptimizeOptions, _publish, _Run

    root, _ = task
    out = tmp_path / "opt"
    (out / "work").mkdir(parents=True)
    for name in ("model.xml", "model.bin", "model.xml.json"):
        (out / name).write_text("earlier run's openvino winner")
    (out / "work" / "base.int8.onnx").write_text("new winner")
    (out / "work" / "base.int8.onnx.json").write_text("{}")
    run = _Run(OptimizeOptions(data=str(root / "ds"), out=str(out)), lambda s: None)
    win = Candidate("ort int8", "onnxruntime", "int8", False, 1.0, str(out / "work" / "base.int8.onnx"))
    assert _publish(run, win) == out / "model.onnx"
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.onnx.json", "work"]
    assert (out / "model.onnx").read_text() == "new winner"
    assert _publish(run, None) is None  # no winner this time: no earlier one left under OUT/model.*
    assert sorted(p.name for p in out.iterdir()) == ["work"]


# --- export: the earlier set survives a failed or interrupted export, and is replaced whole ---


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=3).eval(), ModelMeta("resnet18", "random (test)", NAMES, PRE, True)


def _export(m, out, **kw):
    return api.export(m, out, exporter="torchscript", **kw)


@pytest.mark.slow  # three exports with their checks
def test_a_failed_or_interrupted_export_leaves_the_earlier_export_whole(model, tmp_path, monkeypatch) -> None:
    import resnet_xray.deploy.onnx as onnx_mod

    out = tmp_path / "exp" / "model.onnx"
    assert _export(model, out).output == out
    before = _tree(out.parent)
    assert sorted(before) == ["model.bin", "model.onnx", "model.onnx.json", "model.xml", "model.xml.json"]

    bad = copy.deepcopy(model[0])
    with torch.no_grad():
        bad.fc.weight[0, 0] = float("nan")
    res = _export((bad, model[1]), out)
    assert res.output is None and not res.passed
    assert _tree(out.parent) == before and sorted(p.name for p in out.parent.iterdir()) == sorted(before)

    # Ctrl-C after the new .onnx has landed (its OpenVINO check runs after it)
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_mod, "check_openvino", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _export(model, out)
    assert _tree(out.parent) == before and sorted(p.name for p in out.parent.iterdir()) == sorted(before)


@pytest.mark.slow
def test_an_export_without_the_ir_removes_the_earlier_ir(model, tmp_path) -> None:
    out = tmp_path / "model.onnx"
    for name in ("model.xml", "model.bin", "model.xml.json", "model.fp16.engine"):
        (tmp_path / name).write_text("an earlier, different model")
    assert _export(model, out, openvino=False).output == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.json"]


def test_fuse_refuses_to_replace_the_checkpoint_it_reads(task, capsys) -> None:
    _, ckpt = task
    before = ckpt.read_bytes()
    assert main(["fuse", "--weights", str(ckpt), "-o", str(ckpt)]) == 2
    assert "is the input --weights" in _one_line(capsys) and ckpt.read_bytes() == before


def test_export_refuses_a_file_name_that_is_not_onnx(tmp_path, capsys) -> None:
    assert main(["export", "--arch", "resnet18", "--weights", "random", "-o", str(tmp_path / "m.txt")]) == 2
    assert ".onnx" in _one_line(capsys)
    assert list(tmp_path.iterdir()) == []


def _set(root: Path, text: str, names=("m.onnx", "m.xml", "m.bin")) -> list[Path]:
    for n in names:
        (root / n).write_text(f"{text} {n}")
    return [root / n for n in names]


def test_the_swap_rolls_back_when_interrupted_midway(tmp_path, monkeypatch) -> None:
    import resnet_xray.atomic as atomic

    targets = _set(tmp_path, "old")
    before = _tree(tmp_path)
    real, calls = os.replace, []

    def flaky(a, b):
        calls.append(a)
        if len(calls) == 5:  # old files moved aside, two new ones in place
            raise KeyboardInterrupt
        real(a, b)

    with StagedFiles(targets) as stage:
        for t in targets:
            stage.path(t).write_text(f"new {t.name}")
        monkeypatch.setattr(atomic.os, "replace", flaky)
        with pytest.raises(KeyboardInterrupt):
            stage.commit()
        monkeypatch.setattr(atomic.os, "replace", real)
    assert _tree(tmp_path) == before


_KILLED_MIDWAY = """
import os, signal, sys
from pathlib import Path
import resnet_xray.atomic as atomic
root = Path(sys.argv[1])
targets = [root / n for n in ("m.onnx", "m.xml", "m.bin")]
real, n = os.replace, [0]
def replace(a, b):
    n[0] += 1
    if n[0] == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    real(a, b)
stage = atomic.StagedFiles(targets).__enter__()
for t in targets[:2]:  # the new set has no .bin
    stage.path(t).write_text("new " + t.name)
atomic.os.replace = replace
stage.commit()
"""


@pytest.mark.parametrize("kill_at", [2, 5])
def test_a_swap_killed_outright_is_rolled_back_by_the_next_writer(tmp_path, kill_at) -> None:
    targets = _set(tmp_path, "old")
    before = _tree(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", _KILLED_MIDWAY, str(tmp_path), str(kill_at)], env=env)
    assert proc.returncode == -signal.SIGKILL
    assert _tree(tmp_path) != before  # a mixed set, until the next writer comes
    with StagedFiles(targets):
        pass
    assert _tree(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.onnx", "m.xml"]


# --- every writer takes the lock; no lock file or half-made folder is left ---


def test_export_quantize_and_fuse_take_the_output_lock(model, tmp_path) -> None:
    from resnet_xray.deploy.quantize import quantize_onnx

    out = tmp_path / "m.onnx"
    with held_elsewhere(out, "file_lock"):
        with pytest.raises(XrayError, match="in use by another resnet-xray run"):
            _export(model, out)
        # quantize --engine openvino -o m.xml writes the m.xml export writes: the same lock
        with pytest.raises(XrayError, match="in use"):
            quantize_onnx(tmp_path / "fp32.onnx", tmp_path, tmp_path / "m.xml")
    with held_elsewhere(tmp_path / "f.pt", "file_lock"):
        with pytest.raises(XrayError, match="in use"):
            api.fuse(model, tmp_path / "f.pt")
    # nothing written; the SIGKILLed holders could not remove their lock files, the next holder does
    assert all(p.name.startswith((".m.resnet-xray.lock", ".f.resnet-xray.lock")) for p in tmp_path.iterdir())
    for name in ("m.onnx", "f.pt"):
        with file_lock(tmp_path / name):
            pass
    assert not list(tmp_path.iterdir())


def test_locks_leave_no_lock_file_and_failed_runs_no_new_folder(tmp_path) -> None:
    with output_lock(tmp_path / "run") as run:
        (run / "best.pt").write_text("x")
    with file_lock(tmp_path / "exp" / "m.onnx"):
        (tmp_path / "exp" / "m.onnx").write_text("x")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["exp", "exp/m.onnx", "run", "run/best.pt"]
    with pytest.raises(RuntimeError):
        with output_lock(tmp_path / "new" / "deeper"):
            raise RuntimeError("failed before writing anything")
    with pytest.raises(RuntimeError):
        with output_lock(tmp_path / "run"):  # existed before: kept
            raise RuntimeError
    assert not (tmp_path / "new").exists() and (tmp_path / "run" / "best.pt").exists()


def test_a_finetune_that_fails_before_training_leaves_no_folder(task, tmp_path, monkeypatch, capsys) -> None:
    import resnet_xray.train.job as ft

    root, _ = task

    def unavailable(*a, **k):
        raise XrayError("pretrained weights are not cached and download.pytorch.org cannot be reached")

    monkeypatch.setattr(ft, "build_for_finetune", unavailable)
    out = tmp_path / "runs" / "ft"
    assert main(["finetune", str(root / "ds"), "--out", str(out), "--arch", "resnet18", "--weights", "imagenet", "--epochs", "1",
                 "--no-progress", "--workers", "0"]) == 2
    assert "cannot be reached" in _one_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_stale_quantize_work_folders_of_dead_runs_are_removed(tmp_path) -> None:
    from resnet_xray.deploy.quantize import quantize_onnx

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (dead, live.pid):
            (tmp_path / f".quantize-{pid}-abc").mkdir()
            (tmp_path / f".quantize-{pid}-abc" / "int8.onnx").write_bytes(b"54 MB of work")
        (tmp_path / ".quantize-olderformat").mkdir()  # no pid: whose it is cannot be told, so it stays
        with pytest.raises(XrayError):  # the next run, whatever becomes of it, clears what dead runs left
            quantize_onnx(tmp_path / "missing.onnx", tmp_path, tmp_path / "q.onnx")
        assert sorted(p.name for p in tmp_path.iterdir()) == [f".quantize-{live.pid}-abc", ".quantize-olderformat"]
        assert remove_stale_dirs(tmp_path, ".quantize-") == []
    finally:
        live.kill()
        live.wait()
