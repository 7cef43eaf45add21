"""optimize --min-agreement: INT8 judged against its FP32 model on control images, the would-be winner repaired.

A resnet18 trained for a few seconds on the reference shapes, with one weight of
``layer2.0.conv1`` made 10x the layer's largest: the FP32 model still tells the shapes apart,
and NNCF's plain INT8 flips two of 16 control images.
"""

from __future__ import annotations

import json

import pytest
import torch

from resnet_xray.cli import main
from resnet_xray.deploy.optimize import OptimizeOptions, optimize
from resnet_xray.image import ImageStream, Preprocessing
from resnet_xray.model import ModelMeta, build_model, save_checkpoint

pytestmark = pytest.mark.slow

TARGET = 0.95


@pytest.fixture(scope="module")
def spiky(tmp_path_factory):
    root = tmp_path_factory.mktemp("opt-repair")
    assert main(["make-dataset", str(root / "data"), "--classes", "3", "--per-class", "8", "--val-per-class", "3", "--size", "64"]) == 0
    names = sorted(p.name for p in (root / "data" / "train").iterdir())
    pre = Preprocessing(resize=72, crop=64)
    t = pre.transform()
    pairs = [(t(img), names.index(p.parent.name)) for p, img in ImageStream([root / "data" / "train"])]
    x, y = torch.stack([a for a, _ in pairs]), torch.tensor([b for _, b in pairs])
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=len(names))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model.train()(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        w = model.eval().layer2[0].conv1.weight
        w[0, 0, 0, 0] = 10 * w.abs().max()
        assert len(set(model(x).argmax(1).tolist())) == 3  # still a classifier, not a constant
    return root, save_checkpoint(root / "r18.pt", model, ModelMeta("resnet18", "trained in test", names, pre, True))


@pytest.fixture(scope="module")
def repaired_run(spiky, tmp_path_factory):
    root, ckpt = spiky
    out = tmp_path_factory.mktemp("run") / "opt"
    opts = OptimizeOptions(data=str(root / "data"), out=str(out), max_drop=100.0, engines=("ort", "openvino"), min_agreement=TARGET,
                           calib_images=8, repeats=3, rounds=1, threads=1, batch_size=4, progress=False)
    return optimize(str(ckpt), opts, log=lambda s: None), out


def test_the_would_be_winner_is_repaired_and_timed_with_the_rest(repaired_run) -> None:
    res, out = repaired_run
    fixed = next(c for c in res.candidates if c.repair)  # which INT8 would win is a matter of timing: either route
    plain = next(c for c in res.candidates if c.name == fixed.repair["repaired"])
    # judged on the 16 train images outside calibration, never on val
    assert plain.control_agreement < TARGET <= fixed.control_agreement
    assert plain.status == "dropped" and "under the 95.0% target" in plain.reason
    # the repair returned layers to float, named as PyTorch names them, and says how and why
    assert fixed.kept_float and all(n.startswith(("conv1", "layer", "fc")) for n in fixed.kept_float)
    assert fixed.precision == "int8+fp32" and fixed.name.endswith("repaired)") and fixed.engine == plain.engine
    r = fixed.repair
    assert r["control_images"] == 16 and r["target"] == TARGET and r["kept_float"] == fixed.kept_float
    assert r["control_agreement_before"] == plain.control_agreement and r["control_agreement"] == fixed.control_agreement
    assert r["method"] and r["why"]
    # timed in the same round-robin as every other candidate, after the repair
    assert all(c.latency_ms for c in res.candidates)
    # no INT8 under the target wins
    assert res.winner.control_agreement is None or res.winner.control_agreement >= TARGET
    report = json.loads((out / "optimize.json").read_text())
    assert next(c for c in report["candidates"] if c["name"] == fixed.name)["repair"] == r


def test_nncf_accuracy_control_on_agreement_returns_layers_to_float(spiky, repaired_run, tmp_path) -> None:
    from resnet_xray.deploy.data import image_batches, list_images, spread
    from resnet_xray.deploy.runtime import load_deployed
    from resnet_xray.deploy.winner_repair import Inputs, agreement, repair_candidate, top1

    (root, _), (_, out) = spiky, repaired_run
    work, pre = out / "work", Preprocessing(resize=72, crop=64)
    train = list_images(root / "data" / "train", "--data")
    calib = spread(train, 8)
    control = [f for f in train if f not in calib]  # as optimize splits them
    kx = [x for _, x in image_batches(control, pre, 8, [], "control", False)]
    parent = top1(load_deployed(work / "base.fp32.xml")[0].run, kx)
    src = Inputs(work / "base.fp32.onnx", calib, [x for _, x in image_batches(calib, pre, 1, [], "calib", False)], [], control, kx, parent)
    r = repair_candidate("openvino int8 (nncf)", "openvino", "", src, TARGET, tmp_path)
    assert r.name == "openvino int8 (nncf, repaired)" and r.path == tmp_path / "base.int8_repaired.xml"
    before = agreement(top1(load_deployed(work / "base.int8_nncf.xml")[0].run, kx), parent)
    after = agreement(top1(load_deployed(r.path)[0].run, kx), parent)
    assert before < TARGET <= after
    assert r.kept_float and "returned them to float" in r.detail["why"]
    assert "top-1 agreement" in json.loads((tmp_path / "base.int8_repaired.xml.json").read_text())["quantization"]["method"]


def test_no_target_means_no_control_stage_and_no_repair(spiky, tmp_path) -> None:
    root, ckpt = spiky
    opts = OptimizeOptions(data=str(root / "data"), out=str(tmp_path / "opt"), max_drop=100.0, engines=("openvino",), min_agreement=0.0,
                           calib_images=8, repeats=3, rounds=1, threads=1, batch_size=4, progress=False)
    res = optimize(str(ckpt), opts, log=lambda s: None)
    assert all(c.control_agreement is None and c.repair is None for c in res.candidates)
    assert not any("repaired" in c.name for c in res.candidates)
