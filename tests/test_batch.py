"""classify --out: streamed inputs, whole-record appends, resume after kill -9, refusals, Parquet, manifests and globs."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import resnet_xray as rx
from resnet_xray.batch.inputs import iter_inputs
from resnet_xray.cli import main

from .batchdata import BAD, assert_exactly_once, image_tree, read_jsonl, small_checkpoint
from .lockholder import held_elsewhere

KILLS = 5


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small batches on a shared 2-core machine: one intra-op thread each (subprocesses get OMP_NUM_THREADS=1)."""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return small_checkpoint(tmp_path_factory.mktemp("net") / "small.pt")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("collection") / "images"
    return root, image_tree(root)


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-m", "resnet_xray", "classify", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_exactly_once_after_kill_9_at_random_points_then_resume(ckpt, tree, tmp_path):
    root, paths = tree
    out = tmp_path / "results.jsonl"
    argv = (str(root), "--weights", str(ckpt), "--out", str(out), "--batch-size", "4", "--topk", "3")
    rng = random.Random(0)
    killed_with = []
    for _ in range(KILLS):
        before = _lines(out)
        target = before + rng.randint(1, 40)  # somewhere in the next ten batches
        proc = _cli(*argv)
        while proc.poll() is None and _lines(out) < target:
            time.sleep(0.002)
        time.sleep(rng.random() * 0.05)  # and a random moment after that: between or inside a write
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        killed_with.append(_lines(out))
    assert killed_with[0] < len(paths), "no kill landed before the job ended: nothing was tested"
    assert main(["classify", *argv]) == 0  # the resume, in this process
    records = read_jsonl(out)
    assert_exactly_once(records, paths)
    bad = {str(root / b) for b in BAD}
    assert {r["path"] for r in records if r["error"]} == bad
    assert all(len(r["topk"]) == 3 and r["model"] == records[0]["model"] for r in records if not r["error"])


def test_a_torn_last_line_is_dropped_and_redone(ckpt, tree, tmp_path):
    root, paths = tree
    out = tmp_path / "r.jsonl"
    first = rx.classify_batch(ckpt, paths[:20], out, batch_size=8, progress=False)
    assert (first.written, first.errors, first.already) == (20, 0, 0)
    with open(out, "ab") as f:
        f.write(b'{"path": "' + paths[20].encode() + b'", "topk": [{"lab')  # a write cut short by a kill
    again = rx.classify_batch(ckpt, paths[:40], out, batch_size=8, progress=False)
    assert (again.written, again.already) == (20, 20)
    assert_exactly_once(read_jsonl(out), paths[:40])


def test_unreadable_files_are_recorded_as_errors_and_the_run_goes_on(ckpt, tree, tmp_path, capsys):
    root, paths = tree
    out = tmp_path / "r.jsonl"
    inputs = [*paths[:5], str(root / BAD[0]), str(root / BAD[1]), str(root / "missing.png"), *paths[5:10]]
    assert main(["classify", *inputs, "--weights", str(ckpt), "--out", str(out)]) == 0
    assert "3 file(s) could not be read" in capsys.readouterr().err
    records = {r["path"]: r for r in read_jsonl(out)}
    assert len(records) == 13
    assert records[str(root / BAD[0])]["error"] == "empty file (0 bytes)"
    assert "not an image" in records[str(root / BAD[1])]["error"]
    assert records[str(root / "missing.png")]["error"] == "no such file"
    assert all(r["topk"] == [] for r in records.values() if r["error"])
    assert sum(1 for r in records.values() if not r["error"]) == 10


def test_a_second_run_on_the_same_out_is_refused(ckpt, tree, tmp_path, capsys):
    root, paths = tree
    out = tmp_path / "r.jsonl"
    with held_elsewhere(out, "file_lock", flag="--out"):
        assert main(["classify", *paths[:3], "--weights", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "in use by another resnet-xray run" in err and str(out) in err
    assert not out.exists()


def test_resuming_with_another_model_or_settings_is_refused_unless_overwrite(ckpt, tree, tmp_path, capsys):
    root, paths = tree
    out = tmp_path / "r.jsonl"
    base = ["classify", *paths[:6], "--out", str(out)]
    assert main([*base, "--weights", str(ckpt), "--topk", "2"]) == 0
    capsys.readouterr()
    assert main([*base, "--weights", str(ckpt), "--topk", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--topk 2, not 3" in err and "--overwrite" in err
    other = small_checkpoint(tmp_path / "other.pt", seed=1)
    assert main([*base, "--weights", str(other), "--topk", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "was written by model" in err
    assert main([*base, "--weights", str(other), "--topk", "3", "--overwrite"]) == 0
    records = read_jsonl(out)
    assert_exactly_once(records, paths[:6])
    assert all(len(r["topk"]) == 3 for r in records)


def test_parquet_output_resumes_part_by_part(ckpt, tree, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    root, paths = tree
    out = tmp_path / "r.parquet"
    first = rx.classify_batch(ckpt, [root], out, batch_size=16, topk=2, progress=False)
    assert first.written == len(paths) and first.errors == len(BAD)
    table = pq.read_table(out)
    assert sorted(table.column("path").to_pylist()) == sorted(paths)
    row = table.slice(0, 1).to_pylist()[0]
    assert set(row) == {"path", "topk", "error", "model"} and len(row["topk"]) in (0, 2)
    again = rx.classify_batch(ckpt, [root], out, batch_size=16, topk=2, progress=False)
    assert (again.written, again.already) == (0, len(paths))
    jsonl = tmp_path / "r.jsonl"
    rx.classify_batch(ckpt, [root], jsonl, batch_size=16, topk=2, progress=False)
    by_path = {r["path"]: r for r in read_jsonl(jsonl)}
    for r in table.to_pylist():  # the same records in both formats
        assert r["error"] == by_path[r["path"]]["error"]
        assert [t["index"] for t in r["topk"]] == [t["index"] for t in by_path[r["path"]]["topk"]]


def test_manifest_and_glob_inputs(ckpt, tree, tmp_path):
    root, paths = tree
    listed = paths[:7]
    manifest = root / "list.txt"  # relative paths are read from the manifest's folder
    manifest.write_text("# seven images\n" + "\n".join(os.path.relpath(p, root) for p in listed) + "\n\n")
    csv = tmp_path / "list.csv"
    csv.write_text("label,path\n" + "\n".join(f"x,{p}" for p in paths[7:10]) + "\n")
    pattern = str(root / "part1" / "**" / "*.png")
    globbed = [p for p in paths if p.startswith(str(root / "part1")) and p.endswith(".png")]
    assert sorted(i.path for i in iter_inputs([pattern])) == sorted(globbed)
    out = tmp_path / "r.jsonl"
    res = rx.classify_batch(ckpt, [pattern], out, manifest=manifest, progress=False)
    assert res.written == len(set(globbed) | set(listed))
    rx.classify_batch(ckpt, [], out, manifest=csv, progress=False)
    assert_exactly_once(read_jsonl(out), sorted(set(globbed) | set(listed) | set(paths[7:10])))


def test_worker_processes_give_the_same_records(ckpt, tree, tmp_path):
    root, paths = tree
    inline = rx.classify_batch(ckpt, paths[:40], tmp_path / "a.jsonl", batch_size=8, progress=False)
    pooled = rx.classify_batch(ckpt, paths[:40], tmp_path / "b.jsonl", batch_size=8, workers=2, progress=False)
    assert inline.written == pooled.written == 40
    a = {r["path"]: r for r in read_jsonl(tmp_path / "a.jsonl")}
    b = {r["path"]: r for r in read_jsonl(tmp_path / "b.jsonl")}
    assert a.keys() == b.keys()
    for p in a:
        assert [t["index"] for t in a[p]["topk"]] == [t["index"] for t in b[p]["topk"]]
        assert a[p]["topk"][0]["prob"] == pytest.approx(b[p]["topk"][0]["prob"], rel=1e-5)


def test_ctrl_c_stops_between_batches_and_a_rerun_finishes(ckpt, tree, tmp_path):
    root, paths = tree
    out = tmp_path / "r.jsonl"
    argv = (str(root), "--weights", str(ckpt), "--out", str(out), "--batch-size", "4", "--workers", "1")
    proc = _cli(*argv)
    while proc.poll() is None and _lines(out) < 8:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode != 0:  # it finished first on a quick machine; otherwise it stopped cleanly
        assert proc.returncode == 130 and "run the same command again to finish" in err and "Traceback" not in err
    read_jsonl(out)  # every line whole
    assert main(["classify", *argv]) == 0
    assert_exactly_once(read_jsonl(out), paths)


@pytest.mark.parametrize("flag", [["--workers", "2"], ["--manifest", "m.txt"], ["--overwrite"], ["--ray"]])
def test_batch_flags_need_out(cat_path, capsys, flag):
    assert main(["classify", str(cat_path), "--arch", "resnet18", "--weights", "random", *flag]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{flag[0]}: only with --out" in err


def test_bad_out_name_is_refused_before_the_model_loads(cat_path, tmp_path, capsys):
    assert main(["classify", str(cat_path), "--weights", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "r.csv")]) == 2
    assert "choose a .jsonl or .parquet name" in capsys.readouterr().err


def test_ray_missing_says_how_to_install_it(cat_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as where the extra is not installed
    out = tmp_path / "r.jsonl"
    assert main(["classify", str(cat_path), "--arch", "resnet18", "--weights", "random", "--out", str(out), "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Ray is not installed" in err and "pip install 'resnet-xray[ray]'" in err
    assert not out.exists()
