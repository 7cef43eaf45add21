"""INT8 quantisation on a small model trained in the test: agreement with FP32, and the calibration error paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from resnet_xray.cli import main
from resnet_xray.deploy import quantize as quantize_mod
from resnet_xray.deploy.onnx import ExportOptions, export_onnx, sidecar_path
from resnet_xray.deploy.quantize import CpuInt8Support, QuantizeOptions, detect_cpu_int8, quantize_onnx
from resnet_xray.deploy.torch_int8 import quantize_torch_fx
from resnet_xray.errors import XrayError
from resnet_xray.image import Preprocessing
from resnet_xray.model import ModelMeta

PRE = Preprocessing(resize=36, crop=32, source="test 32 px")
COLOURS = [(200, 40, 40), (40, 180, 60), (50, 70, 210), (210, 200, 60)]
PER_CLASS = 15


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two spinning OpenMP threads run 20x slower."""
    from resnet_xray.deploy.bench import torch_threads

    with torch_threads(1):
        yield


def write_dataset(root: Path, seed: int, per_class: int = PER_CLASS) -> Path:
    """Four classes told apart by colour and stripe direction, with noise: separable but not trivial."""
    rng = np.random.default_rng(seed)
    for k, colour in enumerate(COLOURS):
        d = root / f"class_{k}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.array(colour, np.float32) * rng.uniform(0.6, 1.0) + rng.normal(0, 25, (40, 40, 3))
            stripes = (np.arange(40) // 4) % 2 == 0
            if k % 2:
                img[:, stripes] *= 0.6
            else:
                img[stripes, :] *= 0.6
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:02d}.png")
    return root


class TinyBlock(nn.Module):
    """A basic residual block, torchvision-style (conv-bn-relu, conv-bn, add the shortcut, relu)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    """A narrow ResNet-like classifier (16-32 channels) that trains in seconds on two cores."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = TinyBlock(16, 16, 1)
        self.layer2 = TinyBlock(16, 32, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def tiny_resnet() -> nn.Module:
    return TinyResNet(len(COLOURS))


def train_tiny(data: Path, steps: int = 60) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """:func:`tiny_resnet` trained on ``data`` for a few seconds (AdamW, batches of 32); the model in eval mode and its data."""
    from resnet_xray.deploy.timing import torch_threads
    from resnet_xray.image import ImageStream

    t = PRE.transform()
    xs, ys = [], []
    for p, img in ImageStream([data]):
        xs.append(t(img))
        ys.append(int(p.parent.name.split("_")[1]))
    x, y = torch.stack(xs), torch.tensor(ys)
    torch.manual_seed(0)
    model = tiny_resnet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with torch_threads(1):
        for _ in range(steps):
            idx = torch.randperm(len(x))[:32]
            loss = nn.functional.cross_entropy(model.train()(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), x, y


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small ResNet trained for a few seconds on the synthetic folder, exported to ONNX."""
    root = tmp_path_factory.mktemp("quant")
    data = write_dataset(root / "data", seed=0)
    model, x, y = train_tiny(data)
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.95, f"the fixture model did not learn the synthetic task (accuracy {acc:.2f})"
    meta = ModelMeta("resnet18", "trained in test", [f"class_{k}" for k in range(len(COLOURS))], PRE, True)
    onnx_path = export_onnx(model, root / "fp32.onnx", ExportOptions(dynamic_batch=True, exporter="torchscript"), meta)
    return model, onnx_path, data, root


def test_ort_int8_agrees_with_fp32_on_held_out_labelled_images(trained) -> None:
    model, fp32, data, root = trained
    out = root / "int8.onnx"
    rep = quantize_onnx(fp32, data, out, QuantizeOptions(per_channel=True, progress=False), torch_model=model)
    a = rep["agreement"]
    assert rep["held_out"]["separate_from_calibration"] and a["images"] == 4 * PER_CLASS // 5
    assert rep["calibration"]["images_used"] == 4 * PER_CLASS - a["images"]
    int8 = a["paths"]["ort_int8"]
    assert int8["top1_agreement"] >= 0.9 and int8["top5_overlap"] >= 0.99 and int8["mean_kl"] < 0.05
    # ImageFolder labels matched to the class names give accuracy
    assert a["paths"]["ort_fp32"]["accuracy"] >= 0.9 and int8["accuracy"] >= 0.9
    assert a["paths"]["torch_int8_fx"]["top1_agreement"] >= 0.9
    assert rep["size_int8_bytes"] < rep["size_fp32_bytes"] / 2  # tiny model: QDQ scales weigh a lot
    side = json.loads(sidecar_path(out).read_text())
    assert side["quantization"]["choices"]["format"] == "QDQ" and side["quantization"]["choices"]["per_channel"] is True
    assert side["preprocessing"]["crop"] == 32
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def _activation_scales(path: Path) -> dict[str, float]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.input[0]: float(init[n.input[1]]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[1] in init and init[n.input[1]].size == 1 and n.input[0] not in init}


def test_entropy_calibration_clips_ranges_minmax_keeps(trained) -> None:
    _, fp32, data, root = trained
    scales = {}
    for method in ("minmax", "entropy"):
        out = root / f"{method}.int8.onnx"
        quantize_onnx(fp32, data, out, QuantizeOptions(method=method, progress=False))
        scales[method] = _activation_scales(out)
    assert scales["minmax"].keys() == scales["entropy"].keys() and len(scales["minmax"]) >= 5
    # Entropy picks a threshold inside the observed range: never wider, and narrower somewhere.
    assert all(scales["entropy"][k] <= scales["minmax"][k] * (1 + 1e-6) for k in scales["minmax"])
    narrower = [k for k in scales["minmax"] if scales["entropy"][k] < 0.95 * scales["minmax"][k]]
    assert narrower, "entropy calibration gave the min/max ranges"


def test_pytorch_fx_int8_agrees_with_eager(trained) -> None:
    model, _, data, _ = trained
    from resnet_xray.deploy.data import image_batches, list_images

    files = list_images(data, "--calib")
    q = quantize_torch_fx(model, files, PRE)
    batch = next(image_batches(files[::3], PRE, 64, [], "x", False))[1]
    x = torch.from_numpy(batch)
    with torch.no_grad():
        agree = (q.model(x).argmax(1) == model(x).argmax(1)).float().mean().item()
    assert q.calibration_images == len(files) and agree >= 0.9


def test_unreadable_calibration_images_are_skipped_and_listed(trained, capsys) -> None:
    _, fp32, data, root = trained
    calib = root / "calib_with_bad"
    shutil.copytree(data, calib)
    (calib / "class_0" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (calib / "class_1" / "zz_empty.jpg").write_bytes(b"")
    out = root / "skip.int8.onnx"
    assert main(["quantize", str(fp32), "--calib", str(calib), "-o", str(out), "--eval", str(data)]) == 0
    err = capsys.readouterr().err
    assert "zz_broken.png" in err and "zz_empty.jpg" in err
    rep = json.loads(sidecar_path(out).read_text())["quantization"]
    skipped = sorted(Path(s["path"]).name for s in rep["calibration"]["skipped"])
    assert skipped == ["zz_broken.png", "zz_empty.jpg"]
    assert rep["calibration"]["images_used"] == 4 * PER_CLASS  # the rest were all used


def test_empty_and_unreadable_calibration_folders_exit_2(trained, tmp_path, capsys) -> None:
    _, fp32, _, _ = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["quantize", str(fp32), "--calib", str(empty), "-o", str(tmp_path / "q.onnx")]) == 2
    assert "no image files" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"{i}.png").write_text("not a png")
    with pytest.raises(XrayError, match="none of the 3 calibration images"):
        quantize_onnx(fp32, bad, tmp_path / "q.onnx", QuantizeOptions(progress=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "empty"]  # no output, no temp folder


def test_unwritable_output_and_failed_run_leave_nothing(trained, tmp_path, monkeypatch) -> None:
    _, fp32, data, _ = trained
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["quantize", str(fp32), "--calib", str(data), "-o", str(blocker / "q.onnx")]) == 2
    target = tmp_path / "q.onnx"
    target.write_bytes(b"old")

    def crash(*a, **k):
        raise RuntimeError("simulated crash in the agreement check")

    monkeypatch.setattr(quantize_mod, "agreement", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        quantize_onnx(fp32, data, target, QuantizeOptions(progress=False))
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "q.onnx"]


def test_reduce_range_follows_vnni(trained, tmp_path, monkeypatch) -> None:
    _, fp32, data, _ = trained
    monkeypatch.setattr(quantize_mod, "detect_cpu_int8", lambda: CpuInt8Support(False, [], "test"))
    rep = quantize_onnx(fp32, data, tmp_path / "q.onnx", QuantizeOptions(progress=False, max_calib_images=8))
    assert rep["choices"]["reduce_range"] is True and "lacks VNNI" in rep["choices"]["reduce_range_reason"]
    monkeypatch.setattr(quantize_mod, "detect_cpu_int8", lambda: CpuInt8Support(True, ["avx512_vnni"], "test"))
    rep = quantize_onnx(fp32, data, tmp_path / "q.onnx", QuantizeOptions(progress=False, max_calib_images=8))
    assert rep["choices"]["reduce_range"] is False and rep["choices"]["cpu_vnni"] is True


def test_detect_cpu_int8_reads_real_flags() -> None:
    cpu = detect_cpu_int8()
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    assert cpu.vnni == any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def test_a_result_that_wrote_nothing_says_none_not_a_traceback() -> None:
    from dataclasses import fields

    from resnet_xray.deploy.quantize import QuantizeResult
    from resnet_xray.provenance import WeightsInfo

    report = {f.name: None for f in fields(QuantizeResult) if f.name != "weights"}  # a sidecar's report, as written
    failed = QuantizeResult.from_report({**report, "int8_model": None, "passed": False}, WeightsInfo.random())
    assert failed.int8_model is None  # was Path(None): a TypeError for an API user
    assert QuantizeResult.from_report({**report, "int8_model": "m.int8.onnx"}, WeightsInfo.random()).int8_model == Path("m.int8.onnx")


def test_the_agreement_target_is_strict_where_int8_repairs_itself() -> None:
    assert QuantizeOptions().min_agreement == 0.995  # ONNX Runtime INT8 repairs itself towards it
    assert QuantizeOptions(engine="openvino").min_agreement == 0.995  # and NNCF's through its accuracy control
    assert QuantizeOptions(engine="openvino", min_agreement=0.99).min_agreement == 0.99


def test_a_capped_calibration_set_spans_every_class_folder(tmp_path) -> None:
    # the first N of a sorted ImageFolder listing are one class; calibration capped so saw one class only
    from resnet_xray.deploy.data import list_images, spread

    for c in ("a", "b", "c"):
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp_path / c / f"{i}.png")
    files = list_images(tmp_path, "--calib")
    picked = spread(files, 6)
    assert len(picked) == 6 and {p.parent.name for p in picked} == {"a", "b", "c"}
    assert spread(files, None) == files and spread(files, 100) == files
    assert QuantizeOptions().max_calib_images == 256


def test_chunked_calibration_sees_every_batch_once_and_keeps_histograms_bounded() -> None:
    # a spike in a late chunk used to grow ORT's histogram to ~130,000 bins and the entropy search ran for hours
    from onnxruntime.quantization.calibrate import HistogramCollector

    from resnet_xray.deploy.qdq import _Chunks, _coarsen

    class Reader:
        def __init__(self):
            self.items = iter(range(37))

        def get_next(self):
            return next(self.items, None)

    chunks, seen = _Chunks(Reader(), 16), []
    while chunks.more():
        seen.append([])
        while (item := chunks.get_next()) is not None:
            seen[-1].append(item)
    assert [len(c) for c in seen] == [16, 16, 5] and sum(seen, []) == list(range(37))

    rng = np.random.default_rng(0)
    collector = HistogramCollector(method="entropy", symmetric=False, num_bins=2048, num_quantized_bins=128,
                                   percentile=99.99, scenario="same")
    for i in range(4):
        x = rng.normal(size=5000).astype(np.float32)
        x[0] = 500.0 if i == 2 else x[0]
        collector.collect({"t": [x]})
        _coarsen(collector)
    hist, edges, lo, hi, threshold = collector.histogram_dict["t"]
    assert 2048 <= len(hist) <= 4096 and len(edges) == len(hist) + 1
    assert hist.sum() == 20000 and edges[-1] == threshold >= 500.0 and edges[0] == -edges[-1]
    assert 0 in edges  # zero stays a bin edge, as ORT's entropy search expects
