"""A deployed OpenVINO file may ask for bf16: it runs bf16 only where the CPU computes it, and says what ran.

On CPUs without avx512_bf16 or AMX, OpenVINO accepts a bf16 hint and computes f32; a file is
never labelled bf16 there, and the user is told in one line. The candidates ``optimize`` makes
of it are judged as INT8 is: against their FP32 model, and never kept when slower than it.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch

from resnet_xray.cli import main
from resnet_xray.deploy import openvino as ov_mod
from resnet_xray.deploy import runtime as runtime_mod
from resnet_xray.deploy.candidates import Candidate, pick, to_repair
from resnet_xray.deploy.onnx import sidecar_path
from resnet_xray.deploy.openvino import PrecisionWarning, native_bf16, with_precision
from resnet_xray.deploy.runtime import deployed_throughput, load_deployed, runner_at_size

from .test_deploy_artefacts import reference  # noqa: F401 - the fixture: a tiny ResNet trained on the reference task

HAS_BF16 = native_bf16()


def _unless_bf16(match: str):
    return contextlib.nullcontext() if HAS_BF16 else pytest.warns(PrecisionWarning, match=match)


@pytest.fixture(scope="module")
def bf16_file(reference):  # noqa: F811
    _, fp32, data, root = reference
    return with_precision(fp32.with_suffix(".xml"), root / "fp32.bf16.xml", "bf16"), fp32.with_suffix(".xml"), data


def test_a_bf16_file_is_labelled_with_what_ran_and_says_so_in_one_line(bf16_file, capsys) -> None:
    bf16, fp32, data = bf16_file
    assert json.loads(sidecar_path(bf16).read_text())["inference_precision"] == "bf16"
    assert main(["evaluate", str(data), "--model", str(fp32), "--model", str(bf16), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert [m["precision"] for m in report["models"]] == ["fp32", "bf16" if HAS_BF16 else "fp32"]
    warned = [line for line in captured.err.splitlines() if "asks for bf16" in line]
    if HAS_BF16:
        assert warned == [] and report["models"][1]["check"]["top1_agreement"] > 0.9
    else:  # computed in f32: the very numbers of the f32 file, and one line per load saying why
        assert warned and all(line.startswith("resnet-xray: warning: ") and "fp32.bf16.xml" in line and "runs it in f32" in line
                              for line in warned)
        assert report["models"][1]["check"]["max_abs_diff"] == 0.0


def test_every_way_of_running_the_file_asks_openvino_for_bf16(bf16_file, monkeypatch, tmp_path) -> None:
    bf16, _, _ = bf16_file
    asked: list[tuple[str, str]] = []

    def spy(model, threads=None, batch=None, *, perf_count=False, precision="f32", hint="LATENCY"):
        asked.append((hint, precision))
        return real(model, threads, batch, perf_count=perf_count, precision=precision, hint=hint)

    real = ov_mod.compile_cpu
    monkeypatch.setattr(ov_mod, "compile_cpu", spy)
    monkeypatch.setattr(runtime_mod, "compile_cpu", spy)
    with _unless_bf16("fp32.bf16.xml: asks for bf16"):
        dm, _ = load_deployed(bf16)  # classify, evaluate
        x = np.random.default_rng(0).standard_normal((1, 3, 48, 48)).astype(np.float32)
        assert runner_at_size(bf16, 48, 1, tmp_path)(x).shape == (1, 4)  # optimize's timing at another size
    assert deployed_throughput(bf16, 1, seconds=0.05) > 0  # classify --out, optimize --objective throughput
    assert ("LATENCY", "bf16") in asked and ("THROUGHPUT", "bf16") in asked
    assert all(p == "bf16" for _, p in asked)


@pytest.mark.parametrize("value", ["fp16", 16])
def test_a_sidecar_asking_for_another_precision_is_one_line_exit_2(bf16_file, tmp_path, capsys, value) -> None:
    bf16, _, data = bf16_file
    bad = tmp_path / "m.xml"
    bad.write_bytes(bf16.read_bytes())
    bad.with_suffix(".bin").write_bytes(bf16.with_suffix(".bin").read_bytes())
    side = json.loads(sidecar_path(bf16).read_text())
    sidecar_path(bad).write_text(json.dumps({**side, "inference_precision": value}))
    assert main(["classify", str(data / "val"), "--model", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m.xml.json" in err[0] and "'inference_precision' must be one of f32, bf16" in err[0]


def _cand(name: str, precision: str, ms: float, control: float | None) -> Candidate:
    return Candidate(name, "openvino", precision, False, 1.0, f"{name}.xml", accuracy=0.9, agreement=0.99, latency_ms=ms,
                     control_agreement=control)


def test_bf16_wins_only_faster_than_fp32_and_within_the_agreement_target() -> None:
    fp32 = _cand("openvino fp32", "fp32", 10.0, None)
    # faster and agreeing: the winner
    assert pick([fp32, _cand("openvino bf16", "bf16", 6.0, 1.0)], 0.9, 1.0, min_agreement=0.995).name == "openvino bf16"
    slow = _cand("openvino bf16", "bf16", 11.0, 1.0)
    assert pick([fp32, slow], 0.9, 1.0, min_agreement=0.995) is fp32
    assert slow.status == "dropped" and slow.reason == "bf16 slower than FP32 on this CPU"
    flips = _cand("openvino bf16", "bf16", 6.0, 0.99)
    assert pick([fp32, flips], 0.9, 1.0, min_agreement=0.995) is fp32 and "under the 99.5% target" in flips.reason
    # bf16 short of the target is not an INT8 file to repair
    assert to_repair([fp32, flips], 0.9, 1.0, "latency", 0.995) is None


def test_a_bf16_file_computes_what_its_f32_twin_does_within_bf16_rounding(bf16_file) -> None:
    bf16, fp32, _ = bf16_file
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32))
    with _unless_bf16("asks for bf16"), torch.inference_mode():
        a, b = load_deployed(fp32)[0](x), load_deployed(bf16)[0](x)
    # f32 here: the same numbers; bf16 keeps 8 bits of mantissa, so a few parts in a hundred of the logits' spread
    assert torch.allclose(a, b, atol=0.0 if not HAS_BF16 else 0.05 * float(a.abs().max()))


def test_held_below_bf16_by_onednn_a_bf16_file_runs_f32_and_says_why(bf16_file, monkeypatch) -> None:
    """Held to AVX2 kernels, OpenVINO still lists BF16 (from cpuid), but a bf16 hint fails to compile on a bf16 CPU."""
    import os
    import subprocess
    import sys

    bf16, _, data = bf16_file
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert not native_bf16()
    # a fresh process, so that oneDNN reads the cap before its first kernel
    run = subprocess.run([sys.executable, "-m", "resnet_xray", "evaluate", str(data), "--model", str(bf16), "--json"],
                         env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["models"][0]["precision"] == "fp32"
    assert (f"resnet-xray: warning: {bf16}: asks for bf16 arithmetic; ONEDNN_MAX_CPU_ISA=AVX2 holds the kernels below bf16, "
            "so OpenVINO runs it in f32") in run.stderr
