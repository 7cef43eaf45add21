"""optimize --min-agreement: INT8 judged against its FP32 model on control images, the would-be winner repaired.

A resnet18 trained for a few seconds on the reference shapes, with one weight of
``layer2.0.conv1`` made 30x the layer's largest: the FP32 model still tells the shapes apart,
and NNCF's plain INT8 flips control images. (At 10x it flips two of 16 with AVX2's INT8 kernels,
whose 16-bit sums saturate, but none with VNNI's exact ones: the spike must be large enough for
either.)
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from resnet_xray.cli import main
from resnet_xray.deploy import optimize as optimize_mod
from resnet_xray.deploy.candidates import Candidate, to_repair
from resnet_xray.deploy.openvino import PrecisionWarning, native_bf16
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
        w[0, 0, 0, 0] = 30 * w.abs().max()
        assert len(set(model(x).argmax(1).tolist())) == 3  # still a classifier, not a constant
    return root, save_checkpoint(root / "r18.pt", model, ModelMeta("resnet18", "trained in test", names, pre, True))


def cand(name: str, ms: float, agree: float | None, precision: str = "int8") -> Candidate:
    return Candidate(name, "openvino", precision, True, 0.5, f"{name}.xml", accuracy=0.9, agreement=0.9, latency_ms=ms,
                     control_agreement=agree)


def test_only_a_would_be_winner_short_of_the_target_and_faster_than_any_that_meets_it_is_repaired() -> None:
    fp32 = cand("openvino fp32", 10.0, None, "fp32")
    # the fastest meets the target: nothing to repair
    assert to_repair([fp32, cand("a", 5.0, 0.996), cand("b", 5.05, 0.99)], 0.9, 1.0, "latency", 0.995) is None
    # the fastest misses it, but one that meets it is within the 3% tie: that one wins as it is
    assert to_repair([fp32, cand("a", 5.0, 0.99), cand("b", 5.1, 0.996)], 0.9, 1.0, "latency", 0.995) is None
    # the fastest misses it and the next that meets it is slower: the fastest is repaired
    fast = cand("a", 5.0, 0.99)
    assert to_repair([fp32, fast, cand("b", 6.0, 0.996)], 0.9, 1.0, "latency", 0.995) is fast
    assert to_repair([fp32, fast], 0.9, 1.0, "latency", 0.995) is fast


@pytest.fixture(scope="module")
def repaired_run(spiky, tmp_path_factory):
    root, ckpt = spiky
    out = tmp_path_factory.mktemp("run") / "opt"
    opts = OptimizeOptions(data=str(root / "data"), out=str(out), max_drop=100.0, engines=("ort", "openvino"), min_agreement=TARGET,
                           calib_images=8, repeats=3, rounds=1, threads=1, batch_size=4, progress=False)
    # NNCF's plain INT8 flips control images and OpenVINO on the QDQ file none: which of the two (all but tied)
    # would win is a matter of timing, so NNCF's is named the one to repair here; the choice itself is tested above
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(optimize_mod, "to_repair", lambda cands, *a: next(c for c in cands if c.name == "openvino int8 (nncf)"))
        # told this CPU has bf16, as an avx512_bf16 or AMX one would say: the bf16 candidates are made and tried
        mp.setattr(optimize_mod, "native_bf16", lambda: True)
        with contextlib.nullcontext() if native_bf16() else pytest.warns(PrecisionWarning):
            res = optimize(str(ckpt), opts, log=lines.append)
    return res, out, lines


def test_the_would_be_winner_is_repaired_and_timed_with_the_rest(repaired_run) -> None:
    res, out, _ = repaired_run
    fixed = next(c for c in res.candidates if c.repair)
    plain = next(c for c in res.candidates if c.name == fixed.repair["repaired"])
    # judged on the 16 train images outside calibration, never on val
    assert plain.control_agreement < TARGET <= fixed.control_agreement
    assert plain.status == "dropped" and "under the 95.0% target" in plain.reason
    # NNCF's other settings first, each measured; then layers back to float, named as PyTorch names them
    tried = fixed.repair["tried"]
    assert [t["setting"] for t in tried] == ["full bias correction", "mixed preset"][: len(tried)]
    assert all(t["control_agreement"] < TARGET for t in tried[:-1])  # each setting is measured, the first that reaches it kept
    if fixed.kept_float:
        assert len(tried) == 2 and tried[-1]["control_agreement"] < TARGET
    else:
        assert tried[-1]["control_agreement"] == fixed.control_agreement >= TARGET
    assert all(n.startswith(("conv1", "layer", "fc")) for n in fixed.kept_float)
    assert fixed.precision == ("int8+fp32" if fixed.kept_float else "int8")
    assert fixed.name == "openvino int8 (nncf, repaired)" and fixed.engine == plain.engine
    r = fixed.repair
    assert r["control_images"] == 16 and r["target"] == TARGET and r["kept_float"] == fixed.kept_float
    assert r["control_agreement_before"] == plain.control_agreement and r["control_agreement"] == fixed.control_agreement
    # on val, against the same FP32 model: for the unpruned model that is the checkpoint itself
    assert r["val_agreement_before"] == plain.val_agreement and r["val_agreement"] == fixed.val_agreement
    assert all(c.val_agreement == c.agreement for c in res.candidates if not c.pruned)
    assert r["method"] and r["why"]
    # timed in the same round-robin as every other candidate, after the repair
    assert all(c.latency_ms for c in res.candidates)
    # no INT8 under the target wins
    assert res.winner.control_agreement is None or res.winner.control_agreement >= TARGET
    report = json.loads((out / "optimize.json").read_text())
    assert next(c for c in report["candidates"] if c["name"] == fixed.name)["repair"] == r


def test_bf16_is_a_candidate_only_where_openvino_computes_in_bf16(repaired_run) -> None:
    from resnet_xray.deploy.runtime import load_deployed

    res, out, lines = repaired_run
    work = out / "work"
    fixed = next(c for c in res.candidates if c.repair)
    # the FP32 IR, and the repaired file where it kept layers in float, were copied to ask for bf16
    with contextlib.nullcontext() if native_bf16() else pytest.warns(PrecisionWarning, match="base.fp32.bf16.xml: asks for bf16"):
        assert load_deployed(work / "base.fp32.bf16.xml")[0].precision == ("bf16" if native_bf16() else "fp32")
    assert (work / "base.int8_repaired.bf16.xml").exists() == bool(fixed.kept_float)
    bf16 = [c for c in res.candidates if "bf16" in c.precision]
    if native_bf16():
        plain = next(c for c in bf16 if c.name == "openvino bf16")
        assert plain.control_agreement is not None and plain.latency_ms  # judged on control and timed like INT8
        assert any(c.precision == "int8+bf16" for c in bf16) == bool(fixed.kept_float)
    else:  # OpenVINO accepts the hint here and computes f32: never a candidate labelled bf16
        assert bf16 == [] and any("openvino bf16: OpenVINO runs it in fp32, not bf16; left out" in s for s in lines)


def test_nncf_accuracy_control_on_agreement_returns_layers_to_float(spiky, repaired_run, tmp_path) -> None:
    from resnet_xray.compare import agreement, top1
    from resnet_xray.deploy.data import image_batches, list_images, spread
    from resnet_xray.deploy.runtime import load_deployed
    from resnet_xray.deploy.winner_repair import Inputs, repair_candidate

    (root, _), (_, out, _) = spiky, repaired_run
    work, pre = out / "work", Preprocessing(resize=72, crop=64)
    train = list_images(root / "data" / "train", "--data")
    calib = spread(train, 8)
    control = [f for f in train if f not in calib]  # as optimize splits them
    kx = [x for _, x in image_batches(control, pre, 8, [], "control", False)]
    parent = top1(load_deployed(work / "base.fp32.xml")[0].run, kx)
    src = Inputs(work / "base.fp32.onnx", calib, [x for _, x in image_batches(calib, pre, 1, [], "calib", False)], [], control, kx, parent)
    r = repair_candidate("openvino int8 (nncf)", "openvino", "", src, TARGET, tmp_path)
    before = agreement(top1(load_deployed(work / "base.int8_nncf.xml")[0].run, kx), parent)
    after = agreement(top1(load_deployed(r.path)[0].run, kx), parent)
    assert r.name == "openvino int8 (nncf, repaired)" and before < TARGET <= after
    tried = {t["setting"]: t["control_agreement"] for t in r.detail["tried"]}
    if r.kept_float:  # no setting was enough: accuracy control on agreement returned layers to float
        assert all(a < TARGET for a in tried.values()) and r.path == tmp_path / "base.int8_repaired.xml"
        assert "returned them to float" in r.detail["why"]
        method = json.loads((tmp_path / "base.int8_repaired.xml.json").read_text())["quantization"]["method"]
        assert "accuracy_control" in method and "top-1 agreement" in method
    else:  # a setting was: the first that reached the target, every layer in INT8
        assert list(tried.values())[-1] >= TARGET and "reached the target" in r.detail["why"]


def test_no_target_means_no_control_stage_and_no_repair(spiky, tmp_path) -> None:
    root, ckpt = spiky
    opts = OptimizeOptions(data=str(root / "data"), out=str(tmp_path / "opt"), max_drop=100.0, engines=("openvino",), min_agreement=0.0,
                           calib_images=8, repeats=3, rounds=1, threads=1, batch_size=4, progress=False)
    res = optimize(str(ckpt), opts, log=lambda s: None)
    assert all(c.control_agreement is None and c.repair is None for c in res.candidates)
    assert not any("repaired" in c.name for c in res.candidates)
