"""The benchmark's statistics and its rows, on a small model (no timing is asserted)."""

from __future__ import annotations

import itertools

import pytest
import torch

from resnet_xray.cli import main
from resnet_xray.deploy import bench as bench_mod
from resnet_xray.deploy.bench import BenchOptions, run_bench
from resnet_xray.deploy.charts import save_chart
from resnet_xray.deploy.timing import time_callable
from resnet_xray.image import Preprocessing
from resnet_xray.model import ModelMeta, build_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with bench_mod.torch_threads(1):
        yield


def test_time_callable_statistics_with_a_fake_clock(monkeypatch) -> None:
    # each call lasts 1, 2, ..., 9 ms; perf_counter is read before/after each call and at the start
    durations = [0.001 * k for k in range(1, 10)]
    clock = itertools.count()
    ticks: list[float] = []
    t = 0.0
    ticks.append(t)  # start
    for d in durations:
        ticks += [t, t + d]
        t += d
    it = iter(ticks + [t] * 100)
    monkeypatch.setattr(bench_mod.time, "perf_counter", lambda: next(it))
    calls = []
    stats = time_callable(lambda: calls.append(next(clock)), warmup=2, repeats=9, min_time_s=0.0)
    assert len(calls) == 11 and stats.repeats == 9
    assert stats.median == pytest.approx(0.005) and stats.min == pytest.approx(0.001) and stats.max == pytest.approx(0.009)
    assert stats.p25 == pytest.approx(0.003) and stats.p75 == pytest.approx(0.007) and stats.iqr == pytest.approx(0.004)
    assert stats.median_ms == pytest.approx(5.0)


@pytest.mark.slow
def test_run_bench_rows_and_chart(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=6).eval()
    meta = ModelMeta("resnet18", "random", [str(i) for i in range(6)], Preprocessing(resize=72, crop=64), False)
    paths = ("eager fp32", "fused", "ort fp32", "ort int8", "pytorch int8 (fx x86)")
    opts = BenchOptions(threads=1, warmup=1, repeats=3, min_time_s=0.0, compile=False, calib_images=6, paths=paths, progress=False)
    res = run_bench(model, meta, opts)
    assert [r.path for r in res.rows] == list(paths)
    assert all(r.status == "ok" for r in res.rows), [(r.path, r.note) for r in res.rows]
    from resnet_xray.dissect import AnatomyOptions, analyze

    assert res.macs == analyze(model, "resnet18", AnatomyOptions(input_size=64)).totals.macs
    eager = res.rows[0]
    assert eager.speedup == pytest.approx(1.0)
    for r in res.rows:
        assert r.gflops == pytest.approx(2 * res.macs / r.stats.median / 1e9)
        # INT8 does other arithmetic than the FP32 peak measures: no share of it is claimed
        assert r.peak_share == (None if "int8" in r.path else pytest.approx(r.gflops / res.peak_gflops))
        assert r.path == "eager fp32" or r.check is not None  # every row is compared with eager
        assert r.speedup == pytest.approx(eager.stats.median / r.stats.median)
    assert res.peak_gflops > 0 and res.agreement["paths"]["ort_int8"]["top1_agreement"] >= 0.0
    assert "eager fp32" in res.table()
    fused = next(r for r in res.rows if r.path == "fused")
    assert fused.check["passed"] and fused.check["max_abs_diff"] < 1e-2
    png = save_chart(res, tmp_path / "chart.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_bad_flags_exit_2(tmp_path, capsys) -> None:
    assert main(["bench", "--arch", "resnet18", "--batch", "1,x"]) == 2
    blocker = tmp_path / "f"
    blocker.write_text("x")
    assert main(["bench", "--arch", "resnet18", "-o", str(blocker / "c.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--batch" in err[0]


@pytest.mark.slow
def test_int8_that_fails_its_check_is_a_failed_row_not_a_crash(monkeypatch) -> None:
    # quantize writes no INT8 model that fails its agreement check (random weights often do);
    # the INT8 rows say why, and every other row still runs
    from resnet_xray.deploy import quantize as quantize_mod

    real = quantize_mod.agreement

    def flipped(runners, *args, **kwargs):  # the INT8 runners' logits negated: their top-1 is the FP32's last class
        first = next(iter(runners))
        return real({n: r if n == first else (lambda x, r=r: -r(x)) for n, r in runners.items()}, *args, **kwargs)

    monkeypatch.setattr(quantize_mod, "agreement", flipped)
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=6).eval()
    meta = ModelMeta("resnet18", "random", [str(i) for i in range(6)], Preprocessing(resize=40, crop=32), False)
    paths = ("eager fp32", "ort fp32", "ort int8", "openvino int8")
    opts = BenchOptions(threads=1, warmup=0, repeats=1, rounds=1, min_time_s=0.0, compile=False, calib_images=6, paths=paths,
                        progress=False)
    res = run_bench(model, meta, opts)
    status = {r.path: (r.status, r.note) for r in res.rows}
    assert status["eager fp32"][0] == "ok" and status["ort fp32"][0] == "ok", status
    for name in ("ort int8", "openvino int8"):
        state, note = status[name]
        assert state == "failed" and "\n" not in note
        assert note.startswith("INT8 model fails its check against FP32 (top-1 agreement") and "untrained weights" in note
    assert res.agreement["passed"] is False
    assert any(n.startswith("ORT/OpenVINO INT8 rows not timed") for n in res.notes)
    assert "failed" in res.table()


def test_a_kept_work_dir_never_times_an_earlier_models_nncf_file(tmp_path) -> None:
    # the NNCF IR was reused from --work-dir whenever it existed: a 1000-class random model's file was then
    # timed (and compared) for a 10-class checkpoint
    paths = ("eager fp32", "ort fp32", "openvino int8 (nncf)")
    for classes in (6, 4):
        torch.manual_seed(0)
        model = build_model("resnet18", num_classes=classes).eval()
        meta = ModelMeta("resnet18", "random", [str(i) for i in range(classes)], Preprocessing(resize=72, crop=64), False)
        opts = BenchOptions(threads=1, warmup=1, repeats=2, min_time_s=0.0, compile=False, calib_images=4, paths=paths,
                            progress=False, work_dir=str(tmp_path / "work"))
        res = run_bench(model, meta, opts)
        nncf = next(r for r in res.rows if r.path == "openvino int8 (nncf)")
        assert nncf.status == "ok" and nncf.check["images"] >= 1, (classes, nncf.note)


@pytest.mark.slow
def test_the_openvino_bf16_row_is_labelled_with_what_ran(monkeypatch) -> None:
    from resnet_xray.deploy import bench as bench_mod
    from resnet_xray.deploy.openvino import native_bf16

    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=6).eval()
    meta = ModelMeta("resnet18", "random", [str(i) for i in range(6)], Preprocessing(resize=72, crop=64), False)
    opts = BenchOptions(threads=1, warmup=1, repeats=2, rounds=1, min_time_s=0.0, compile=False, paths=("eager fp32", "openvino bf16"),
                        progress=False)

    def bf16_row():
        return next(r for r in run_bench(model, meta, opts).rows if r.path == "openvino bf16")

    row = bf16_row()
    if native_bf16():
        # checked as INT8 is, by its decisions, and never a share of the FP32 peak (nor a reason to raise it)
        assert row.status == "ok" and row.check["passed"] and row.peak_share is None
        res = run_bench(model, meta, opts)
        assert res.peak is None or res.peak.raised is None or res.peak.raised.path != "openvino bf16"
    else:
        assert row.status == "skipped" and "no native bf16" in row.note
        # told the CPU has it, OpenVINO still compiles f32 here: the row says so instead of showing f32 as bf16
        monkeypatch.setattr(bench_mod, "native_bf16", lambda: True)
        row = bf16_row()
        assert row.status == "skipped" and "compiled it in f32, not bf16" in row.note
