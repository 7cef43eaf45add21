"""Throughput beside latency: bench's ``throughput_img_s`` per row, ``optimize --objective``, the deployed engines of classify --out."""

from __future__ import annotations

import pytest
import torch

import resnet_xray as rx
from resnet_xray.deploy.bench import THROUGHPUT_NOTE, BenchOptions, run_bench
from resnet_xray.deploy.candidates import Candidate, pick
from resnet_xray.image import Preprocessing
from resnet_xray.model import ModelMeta, build_model

from .batchdata import image_tree, read_jsonl, small_checkpoint


def test_pixel_crops_normalise_to_exactly_what_the_float_pipeline_gives(tmp_path) -> None:
    import numpy as np

    from resnet_xray.batch.decode import decode_batch

    items = [(p, None) for p in image_tree(tmp_path / "images", n=6)[:6]]
    pre = Preprocessing(resize=40, crop=32)
    floats, pixels = decode_batch(items, pre), decode_batch(items, pre, pixels=True)
    assert pixels.paths == floats.paths and pixels.errors == floats.errors
    assert pixels.x.dtype == np.uint8 and pixels.x.shape == (len(floats.paths), 32, 32, 3)
    # what OpenVINO's PrePostProcessor does with them: (x - 255 mean) / (255 std), NHWC -> NCHW
    mean, std = 255 * np.array(pre.mean, np.float32), 255 * np.array(pre.std, np.float32)
    np.testing.assert_allclose(((pixels.x - mean) / std).transpose(0, 3, 1, 2), floats.x, atol=1e-5)


def test_every_bench_row_has_a_throughput_figure(one_thread) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=6).eval()
    meta = ModelMeta("resnet18", "random", [str(i) for i in range(6)], Preprocessing(resize=72, crop=64), False)
    opts = BenchOptions(batches=(1, 4), threads=1, warmup=1, repeats=2, min_time_s=0.0, compile=False,
                        paths=("eager fp32", "openvino fp32"), progress=False)
    res = run_bench(model, meta, opts)
    rows = {(r.path, r.batch): r for r in res.rows}
    assert set(rows) == {(p, b) for p in ("eager fp32", "openvino fp32") for b in (1, 4)}
    assert all(r.status == "ok" for r in res.rows), [(r.path, r.note) for r in res.rows]
    best_eager = max(rows["eager fp32", 1].throughput, rows["eager fp32", 4].throughput)
    assert rows["eager fp32", 1].throughput_img_s == rows["eager fp32", 4].throughput_img_s == best_eager
    for b in (1, 4):  # timed on their own, with the THROUGHPUT hint and an async queue
        assert rows["openvino fp32", b].throughput_img_s > 0
    assert THROUGHPUT_NOTE in res.notes
    assert all(d["throughput_img_s"] > 0 for d in res.to_dict()["rows"])
    assert "tput img/s" in res.table()


def test_optimize_picks_by_the_objective_it_is_given() -> None:
    def c(name, ms, img_s, precision="int8"):
        return Candidate(name, "openvino", precision, False, 1.0, f"{name}.xml", accuracy=0.9, agreement=0.99, latency_ms=ms,
                         throughput_img_s=img_s)

    def fresh():  # the latency winner keeps one stream busy; the other fills every core with a batch
        return [c("fp32", 20.0, 40.0, "fp32"), c("quick", 5.0, 150.0), c("wide", 8.0, 300.0)]

    assert pick(fresh(), 0.9, 1.0).name == "quick"
    cands = fresh()
    win = pick(cands, 0.9, 1.0, "throughput")
    assert win.name == "wide" and "time per image in throughput mode" in cands[1].reason
    with pytest.raises(rx.OptionError, match="objective"):
        from resnet_xray.deploy.optimize import OptimizeOptions

        OptimizeOptions(data=".", objective="speed")


@pytest.mark.slow
def test_deployed_files_run_in_throughput_mode_and_agree_with_pytorch(tmp_path, one_thread) -> None:
    ckpt = small_checkpoint(tmp_path / "small.pt")
    model = rx.load_model(None, ckpt)
    export = rx.export(model, tmp_path / "m.onnx", input_size=32, exporter="torchscript")  # writes m.xml beside it
    assert export.passed and export.openvino
    paths = image_tree(tmp_path / "images", n=40)[:40]
    ref = rx.classify_batch(model, paths, tmp_path / "torch.jsonl", batch_size=16, progress=False)
    assert ref.engine.startswith("pytorch batched")
    want = {r["path"]: r for r in read_jsonl(tmp_path / "torch.jsonl")}
    for name, engine in (("m.xml", "openvino throughput"), ("m.onnx", "onnxruntime batched")):
        res = rx.classify_batch(tmp_path / name, paths, tmp_path / f"{name}.jsonl", batch_size=16, progress=False)
        assert res.engine.startswith(engine) and res.written == 40
        assert ("uint8 input" in res.engine) == (name == "m.xml")  # OpenVINO normalises the decoders' crops itself
        got = read_jsonl(tmp_path / f"{name}.jsonl")
        assert all(r["model"].startswith(name) for r in got)
        for r in got:
            assert r["topk"][0]["index"] == want[r["path"]]["topk"][0]["index"]
            assert r["topk"][0]["prob"] == pytest.approx(want[r["path"]]["topk"][0]["prob"], abs=1e-4)
