"""classify --out --ray: the same job as a Ray Data pipeline on a local 2-CPU instance, resuming a single-machine run.

Ray starts in a child process, so its workers and environment never touch the other tests' process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import resnet_xray as rx

from .batchdata import BAD, assert_exactly_once, image_tree, read_jsonl, small_checkpoint

pytestmark = pytest.mark.ray
pytest.importorskip("ray.data", reason="Ray is an optional extra (pip install 'resnet-xray[ray]'); make test installs it")

RUN_ON_RAY = """
import json, sys
import ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
import resnet_xray as rx
res = rx.classify_batch(sys.argv[1], [sys.argv[2]], sys.argv[3], ray="local", batch_size=16, topk=3, progress=False)
ray.shutdown()
print(json.dumps(res.to_dict()))
"""


def test_local_ray_instance_finishes_the_job_exactly_once(tmp_path, one_thread):
    ckpt = small_checkpoint(tmp_path / "small.pt")
    root = tmp_path / "images"
    paths = image_tree(root, n=120)
    out = tmp_path / "results.jsonl"
    first = rx.classify_batch(ckpt, paths[:50], out, batch_size=16, topk=3, progress=False)  # an earlier run on one machine
    assert first.written == 50
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-c", RUN_ON_RAY, str(ckpt), str(root), str(out)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["ray"] == "local" and res["engine"].startswith("ray data")
    assert (res["already"], res["written"], res["errors"]) == (50, len(paths) - 50, len(BAD))
    records = read_jsonl(out)
    assert_exactly_once(records, paths)
    assert {r["path"] for r in records if r["error"]} == {str(root / b) for b in BAD}
    by_path = {r["path"]: r for r in records}
    check = rx.classify_batch(ckpt, paths[50:60], tmp_path / "here.jsonl", batch_size=16, topk=3, progress=False)
    assert check.written == 10
    for r in read_jsonl(tmp_path / "here.jsonl"):  # Ray's records are the single-machine ones
        assert [t["index"] for t in r["topk"]] == [t["index"] for t in by_path[r["path"]]["topk"]]
        assert r["topk"][0]["prob"] == pytest.approx(by_path[r["path"]]["topk"][0]["prob"], rel=1e-4)


def test_an_openvino_file_on_ray_takes_pixel_crops_and_agrees_with_one_machine(tmp_path, one_thread):
    model = rx.load_model(None, small_checkpoint(tmp_path / "small.pt"))
    export = rx.export(model, tmp_path / "m.onnx", input_size=32, exporter="torchscript")  # writes m.xml beside it
    assert export.openvino
    root = tmp_path / "images"
    paths = image_tree(root, n=40)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-c", RUN_ON_RAY, str(tmp_path / "m.xml"), str(root), str(tmp_path / "ray.jsonl")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    here = rx.classify_batch(tmp_path / "m.xml", paths, tmp_path / "here.jsonl", batch_size=16, topk=3, progress=False)
    assert "uint8 input" in here.engine
    on_ray = {r["path"]: r for r in read_jsonl(tmp_path / "ray.jsonl")}
    assert_exactly_once(list(on_ray.values()), paths)
    for rec in read_jsonl(tmp_path / "here.jsonl"):
        assert rec["error"] == on_ray[rec["path"]]["error"]
        if not rec["error"]:
            assert [t["index"] for t in rec["topk"]] == [t["index"] for t in on_ray[rec["path"]]["topk"]]
            assert rec["topk"][0]["prob"] == pytest.approx(on_ray[rec["path"]]["topk"][0]["prob"], rel=1e-5)
