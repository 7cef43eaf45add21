"""The FP32 peak behind bench's "% peak": every engine's GEMM, the ISA bound, and the raise no path can pass."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from resnet_xray.cli import main
from resnet_xray.deploy import bench as bench_mod
from resnet_xray.deploy import peak as peak_mod
from resnet_xray.deploy.bench import BenchOptions, run_bench
from resnet_xray.deploy.peak import CpuTopology, isa_bound, measure_fp32_peak, read_topology
from resnet_xray.image import Preprocessing
from resnet_xray.model import ModelMeta, build_model

EPYC_AVX512 = """processor\t: 0
model name\t: AMD EPYC 9R14
cpu MHz\t\t: 2600.000
siblings\t: 2
cpu cores\t: 2
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512_vnni
"""


def test_isa_bound_counts_cores_lanes_fma_and_clock(monkeypatch) -> None:
    monkeypatch.setattr(peak_mod.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    topo = read_topology(EPYC_AVX512, max_khz="3700000\n")
    assert topo.cores == 2 and topo.mhz == 3700.0 and "avx512f" in topo.flags
    gflops, how = isa_bound(2, topo)
    assert gflops == pytest.approx(2 * 16 * 4 * 3.7)  # 2 cores x 16 lanes x 2 FMA units x 2 operations x 3.7 GHz
    assert "AVX-512" in how and "3.70 GHz" in how
    assert isa_bound(1, topo)[0] == pytest.approx(gflops / 2)  # one thread uses one core's units
    # two hyper-threads share one core's FMA units
    monkeypatch.setattr(peak_mod.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    smt = read_topology(EPYC_AVX512.replace("siblings\t: 2", "siblings\t: 4"), max_khz="")
    assert smt.cores == 2 and smt.mhz == 2600.0
    assert isa_bound(4, smt)[0] == pytest.approx(2 * 16 * 4 * 2.6)
    avx_no_fma = CpuTopology({"sse2", "avx"}, 2000.0, 1)
    assert isa_bound(1, avx_no_fma)[0] == pytest.approx(8 * 2 * 2.0)  # one adder and one multiplier


def test_isa_bound_says_why_it_cannot_be_derived() -> None:
    assert isa_bound(2, None) == (None, "no /proc/cpuinfo")
    assert isa_bound(2, CpuTopology({"asimd", "fp"}, 3000.0, 2))[0] is None  # not x86
    assert isa_bound(2, CpuTopology({"avx2", "avx", "fma"}, None, 2)) == (None, "no clock measured or reported")


def test_isa_bound_takes_the_higher_of_the_measured_and_reported_clock() -> None:
    topo = CpuTopology({"sse2", "avx", "avx2", "fma"}, 2450.0, 2)  # the base clock, as a VM reports it
    boosted, how = isa_bound(2, topo, measured_ghz=3.2)
    assert boosted == pytest.approx(2 * 8 * 4 * 3.2) and "measured 3.20 GHz, reported 2.45 GHz" in how
    assert isa_bound(2, topo, measured_ghz=1.0)[0] == pytest.approx(2 * 8 * 4 * 2.45)  # a core slowed by load
    assert isa_bound(2, CpuTopology(topo.flags, None, 2), measured_ghz=3.2)[0] == pytest.approx(boosted)


def test_clock_is_measured_with_numba_and_none_without(monkeypatch) -> None:
    ghz = peak_mod.measure_clock_ghz(steps=1_000_000, runs=2)
    assert ghz is not None and ghz > 0

    def no_numba():
        raise ImportError("no numba", name="numba")

    monkeypatch.setattr(peak_mod, "_xorshift_chain", no_numba)
    assert peak_mod.measure_clock_ghz() is None


def test_peak_is_the_highest_estimate_and_failing_engines_are_named() -> None:
    def slow(n, threads):
        return lambda: torch.mm(torch.ones(64, 64), torch.ones(64, 64))

    def fast(n, threads):
        return lambda: None  # a GEMM that takes no time: the highest rate

    def missing(n, threads):
        raise ImportError("no", name="someengine")

    topo = CpuTopology({"sse2"}, 1.0, 1)  # a 1 MHz SSE core: an ISA bound far below both
    p = measure_fp32_peak(1, {"slow": slow, "fast": fast, "missing": missing}, n=64, topo=topo, clock_ghz=None)
    assert set(p.sources) == {"slow", "fast", "ISA bound"} and p.failed == {"missing": "not installed (someengine)"}
    assert p.source == "fast" and p.gflops == p.estimate_gflops == p.sources["fast"] > p.sources["slow"]
    assert p.sources["ISA bound"] == pytest.approx(4 * 2 * 0.001)
    assert p.raised is None and p.raise_note() is None
    assert not p.raise_to("eager fp32", 1, p.gflops / 2)  # below the peak: nothing changes
    assert p.raise_to("ort fp32", 8, p.gflops * 2) and p.gflops == p.raised.gflops
    assert "too low" in p.raise_note() and "ort fp32" in p.raise_note() and p.to_dict()["raised"]["batch"] == 8


def test_every_installed_engine_times_a_gemm() -> None:
    p = measure_fp32_peak(1, n=128, topo=None)
    installed = set(peak_mod.ENGINES) - set(p.failed)
    assert "torch.mm" in installed and set(p.sources) == installed
    assert all(g > 0 for g in p.sources.values()) and p.gflops == max(p.sources.values())


def _fake_rows(self, b: int) -> None:
    """eager FP32 on the real model, and a fake FP32 path that returns at once: its GFLOP/s beats any estimate."""
    x = torch.zeros(b, 3, self.size, self.size)

    def eager():
        def fn():
            with torch.inference_mode():
                return self.model(x)

        return fn

    self.add("eager fp32", b, "cpu", eager)
    self.add("fake fp32", b, "cpu", lambda: (lambda: None))


@pytest.fixture
def fake_path(monkeypatch):
    monkeypatch.setattr(bench_mod._Bench, "_cpu_rows", _fake_rows)
    monkeypatch.setattr(bench_mod._Bench, "_cuda_rows", lambda self, b: None)
    estimates: list[float] = []
    real = bench_mod.measure_fp32_peak

    def measured(threads):
        p = real(threads)
        estimates.append(p.estimate_gflops)
        return p

    monkeypatch.setattr(bench_mod, "measure_fp32_peak", measured)
    return estimates


def _check_raised(doc: dict, first_estimate: float) -> None:
    shares = {r["path"]: r["peak_share"] for r in doc["rows"]}
    assert shares["fake fp32"] == 1.0 and 0 < shares["eager fp32"] <= 1.0
    fake = next(r for r in doc["rows"] if r["path"] == "fake fp32")
    assert fake["gflops"] > first_estimate
    assert doc["cpu_fp32_peak_gflops"] == fake["gflops"]
    assert doc["peak"]["estimate_gflops"] == first_estimate and doc["peak"]["source"] == "raised"
    assert doc["peak"]["raised"]["path"] == "fake fp32"
    assert any("peak estimate" in n and "too low" in n and "fake fp32" in n for n in doc["notes"])


def test_a_path_above_the_estimate_raises_the_peak(fake_path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=6).eval()
    meta = ModelMeta("resnet18", "random", [str(i) for i in range(6)], Preprocessing(resize=40, crop=32), False)
    opts = BenchOptions(threads=1, warmup=0, repeats=2, rounds=1, min_time_s=0.0, compile=False,
                        paths=("eager fp32", "fake fp32"), progress=False)
    res = run_bench(model, meta, opts)
    _check_raised(res.to_dict(), fake_path[0])
    shares = [int(s) for s in re.findall(r"(\d+)%", res.table())]
    assert shares and max(shares) == 100


def test_bench_cli_never_prints_a_share_over_100(fake_path, monkeypatch, capsys) -> None:
    real = bench_mod.run_bench

    def small(model, meta, opts):  # the CLI's run, cut to the two rows on a small input
        return real(model, meta, dataclasses.replace(opts, paths=("eager fp32", "fake fp32"), input_size=32, warmup=0,
                                                     min_time_s=0.0, rounds=1))

    monkeypatch.setattr(bench_mod, "run_bench", small)
    args = ["bench", "--arch", "resnet18", "--no-compile", "--repeats", "1", "--threads", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    table = out[out.index("% peak"):]
    assert max(int(s) for s in re.findall(r"(\d+)%", table)) == 100
    assert "raised to fake fp32" in out and "was too low" in out
    assert main(args + ["--json"]) == 0
    _check_raised(json.loads(capsys.readouterr().out), fake_path[1])
