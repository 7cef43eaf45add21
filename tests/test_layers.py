"""`layers`: PyTorch names on every engine's profile, the sum check, per-layer errors against a reference.

ResNet-18 with random weights at 64 px, exported and quantised by the project's own commands.
No absolute time is asserted anywhere: only that the times land on the right rows and add up
the way the result says they do.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

from resnet_xray import api
from resnet_xray.cli import main
from resnet_xray.deploy.graphmap import OTHER, module_of_param, module_of_scope, row_of, tag
from resnet_xray.deploy.layers import LayersOptions, run_layers
from resnet_xray.deploy.onnx import ExportOptions, export_onnx
from resnet_xray.deploy.profile import SUM_TOLERANCE, LayerTimes, _ort_rows
from resnet_xray.deploy.quantize import QuantizeOptions, quantize_onnx
from resnet_xray.dissect.layers import layer_table

SIZE = 64
FAST = dict(runs=2, warmup=1, threads=1, progress=False)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def r18():
    return api.load_model("resnet18", "random", progress=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (72, 72, 3), dtype=np.uint8)).save(d / f"{i:02d}.png")
    return d


@pytest.fixture(scope="module")
def files(tmp_path_factory, r18, images) -> dict[str, Path]:
    """The FP32 export (dynamo, with its OpenVINO IR) and its ONNX Runtime INT8, at 64 px."""
    d = tmp_path_factory.mktemp("models")
    fp32 = export_onnx(r18.module, d / "r18.onnx", ExportOptions(input_size=SIZE, openvino=True), r18.meta)
    int8 = d / "r18.int8.onnx"
    quantize_onnx(fp32, images, int8, QuantizeOptions(min_agreement=0.0, time_check=False, progress=False))
    return {"fp32": fp32, "int8": int8, "xml": fp32.with_suffix(".xml")}


def conv_names(module) -> list[str]:
    return [r.name for r in layer_table(module, SIZE) if r.type == "conv"]


# --- name mapping ---


def test_names_from_parameters_and_scopes() -> None:
    assert module_of_param("layer3.2.conv2.weight_quantized") == "layer3.2.conv2"
    assert module_of_param("onnx::Conv_251") is None
    assert module_of_scope("/layer2/layer2.0/downsample/downsample.0/Conv") == "layer2.0.downsample.0"
    assert module_of_scope("/conv1/Conv/WithoutBiases") == "conv1"  # OpenVINO's name for the TorchScript node
    rows = {tag(3): "layer1.0.conv1", tag(5): "fc"}
    # names the engines derive from a tagged node: ORT's NCHWc rewrite, OpenVINO's reorders
    assert row_of(f"{tag(3)}_0_nchwc_kernel_time", rows) == "layer1.0.conv1"
    assert row_of(f"input_abcd_acdb_{tag(5)}", rows) == "fc"
    assert row_of("Transpose", rows) == OTHER


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_every_conv_appears_by_its_pytorch_name_on_ort_and_openvino(files, r18, which) -> None:
    res = run_layers(files[which], None, LayersOptions(engines=("ort", "openvino"), **FAST))
    keys = {f"ort-{which}", f"openvino-{which}"}
    assert set(res.end_to_end_ms) == keys
    rows = {r.name: r for r in res.rows}
    for name in conv_names(r18.module) + ["maxpool", "fc"]:
        assert name in rows, name
        assert set(rows[name].times_ms) == keys, name  # both engines' profilers put time on it
        assert all(rows[name].kernels.values())
    assert rows["layer1.0.conv1"].kind == "conv" and rows["fc"].kind == "fc"


def test_openvino_ir_and_macs_match_dissect(files, r18) -> None:
    res = run_layers(files["xml"], None, LayersOptions(**FAST))  # an IR runs on its own engine
    assert set(res.end_to_end_ms) == {"openvino-fp32"}
    dissected = {r.name: r for r in layer_table(r18.module, SIZE)}
    for row in res.rows:
        if row.kind in ("conv", "fc"):
            assert row.macs == dissected[row.name].macs, row.name
            assert row.output_shape == list(dissected[row.name].output_shape), row.name


# --- the sum check ---


def test_sum_check_is_the_per_layer_sum_over_the_same_runs_end_to_end(files) -> None:
    res = run_layers(files["int8"], files["fp32"], LayersOptions(engines=("ort", "openvino"), **FAST))
    for key, check in res.sum_check.items():
        layer_sum = sum(r.times_ms.get(key, 0.0) for r in res.rows)
        assert check["layer_sum_ms"] == pytest.approx(layer_sum)
        assert check["end_to_end_ms"] == res.end_to_end_ms[key] > 0
        assert check["ratio"] == pytest.approx(layer_sum / res.end_to_end_ms[key])
        assert check["passed"] == (abs(check["ratio"] - 1) <= SUM_TOLERANCE)
        assert 0 < check["ratio"] < 10  # profiled kernels are part of the wall-clock run, not another run's


def test_ort_trace_is_split_by_run_and_warmup_dropped() -> None:
    rows = {tag(0): "conv1", tag(1): "fc"}

    def run(ts: int) -> list[dict]:
        return [{"cat": "Session", "name": "model_run", "ts": ts, "dur": 100},
                {"cat": "Node", "name": f"{tag(0)}_nchwc_kernel_time", "ts": ts + 1, "dur": 1000 * (ts // 1000 + 1),
                 "args": {"op_name": "Conv"}},
                {"cat": "Node", "name": f"{tag(1)}_kernel_time", "ts": ts + 50, "dur": 500, "args": {"op_name": "Gemm"}},
                {"cat": "Node", "name": "Transpose_kernel_time", "ts": ts + 60, "dur": 100, "args": {"op_name": "Transpose"}}]

    events = run(0) + run(1000) + run(2000) + run(3000)
    events.append({"cat": "Node", "name": f"{tag(1)}_kernel_time", "ts": 5000, "dur": 9999})  # outside every run
    per_run, kernels = _ort_rows(events, rows, skip=1)
    assert per_run == [{"conv1": 2.0, "fc": 0.5, OTHER: 0.1}, {"conv1": 3.0, "fc": 0.5, OTHER: 0.1},
                       {"conv1": 4.0, "fc": 0.5, OTHER: 0.1}]
    assert max(kernels["conv1"], key=kernels["conv1"].get) == "Conv (NCHWc)"
    times = LayerTimes("ort-int8", {"conv1": 3.0, "fc": 0.5}, {}, 4.0, 3, "test")
    assert times.sum_ratio == pytest.approx(3.5 / 4.0) and times.adds_up
    assert not LayerTimes("ort-int8", {"conv1": 1.0}, {}, 4.0, 3, "test").adds_up


# --- errors against a reference ---


def test_errors_with_a_reference_and_null_without(files, r18, images) -> None:
    opts = LayersOptions(engines=("ort",), images=str(images), max_images=3, **FAST)
    alone = run_layers(files["int8"], None, opts)
    assert all(r.error is None for r in alone.rows) and alone.error_engine is None
    res = run_layers(files["int8"], files["fp32"], opts)
    assert set(res.end_to_end_ms) == {"ort-int8", "ort-fp32"} and res.images == 3
    rows = {r.name: r for r in res.rows}
    for name in conv_names(r18.module) + ["fc"]:
        e = rows[name].error
        assert e is not None, name
        assert 0 < e["rel_l2"] < 1 and 0.9 < e["cosine"] <= 1 + 1e-9, (name, e)
        assert e["sqnr_db"] == pytest.approx(-20 * math.log10(e["rel_l2"]))
        assert set(rows[name].speedup) == {"ort"}
    same = run_layers(files["fp32"], files["fp32"], opts)  # FP32 against itself: nothing to see
    assert {r.name: r.error["rel_l2"] for r in same.rows if r.error} == pytest.approx(
        {r.name: 0.0 for r in same.rows if r.error}, abs=1e-6)


def test_pruned_model_shows_channels_kept_and_no_error_where_shapes_differ(r18) -> None:
    pruned = api.load_model("resnet18", "random", progress=False)
    block = pruned.module.layer1[0]
    block.conv1, block.bn1 = nn.Conv2d(64, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32)
    block.conv2 = nn.Conv2d(32, 64, 3, 1, 1, bias=False)
    pruned.module.eval()
    res = api.layers(pruned, LayersOptions(engines=("torch",), input_size=SIZE, **FAST), against=r18)
    rows = {r.name: r for r in res.rows}
    assert set(res.end_to_end_ms) == {"torch-fp32", "torch-fp32-ref"}
    assert rows["layer1.0.conv1"].channels == {"kept": 32, "of": 64}
    assert rows["layer1.0.conv1"].error is None  # 32 channels cannot be set against 64
    assert rows["layer1.0.conv2"].channels is None and rows["layer1.0.conv2"].error is not None
    assert rows["layer1.0.conv1"].macs == rows["layer1.0.conv2"].macs == 64 * 32 * 9 * (SIZE // 4) ** 2
    assert rows["conv1"].error["rel_l2"] == pytest.approx(0.0, abs=1e-6)  # same weights up to the pruned block


# --- the command ---


def test_cli_json_shape_and_chart(files, tmp_path, capsys) -> None:
    chart = tmp_path / "layers.png"
    rc = main(["layers", str(files["int8"]), "--against", str(files["fp32"]), "--engine", "ort", "--runs", "2",
               "--warmup", "1", "--threads", "1", "--sort", "error", "-o", str(chart), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["end_to_end_ms"]) == {"ort-int8", "ort-fp32"}
    row = doc["rows"][0]
    assert {"name", "macs", "times_ms", "error"} <= set(row) and {"rel_l2", "cosine"} <= set(row["error"])
    errors = [r["error"]["rel_l2"] for r in doc["rows"] if r["error"]]
    assert errors == sorted(errors, reverse=True)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, words", [
    (["notes.txt"], "notes.txt: not a PyTorch weights file"),  # neither a deployed file nor a checkpoint
    (["{xml}", "--engine", "ort"], "OpenVINO IR"),
    (["{int8}", "--engine", "torch"], "torch engine"),
    (["{int8}", "--engine", "tensorflow"], "--engine"),
    (["{int8}", "--runs", "0"], "--runs"),
])
def test_bad_input_is_one_line_and_exit_2(files, tmp_path, capsys, argv, words) -> None:
    (tmp_path / "notes.txt").write_text("x")
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
    argv[0] = argv[0] if argv[0] != "notes.txt" else str(tmp_path / "notes.txt")
    assert main(["layers", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
