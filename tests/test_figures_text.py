"""Every figure the project draws: no text over other text, none off the figure, no label over a picture.

Each builder below makes one figure with a small random ResNet-18 or made-up numbers shaped
like a real run's; :func:`tests.figtext.text_problems` renders it and measures every text.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from resnet_xray.image import Preprocessing, bundled_cat, load_image
from resnet_xray.provenance import WeightsInfo

from .figtext import text_problems

RANDOM = WeightsInfo.random("random (seed 0)")
TRAINED = WeightsInfo("runs/ft/best.pt", True, None, True, "trained by resnet-xray finetune")


@pytest.fixture(scope="module")
def r18():
    """A random ResNet-18 at 64 px, one traced pass over the cat, and the pieces the pictures draw."""
    from resnet_xray.model import load_model
    from resnet_xray.viz.maps import capture, layer_rows
    from resnet_xray.viz.stages import stage_outputs

    torch.manual_seed(0)
    model, meta = load_model("resnet18", "random")
    meta = dataclasses.replace(meta, preprocessing=Preprocessing(resize=72, crop=64))
    x = meta.preprocessing(load_image(bundled_cat())).unsqueeze(0)
    stages = stage_outputs(layer_rows(model, 64))
    cap = capture(model, x, ["maxpool", "layer1.0.conv1", "layer1.0.relu_1", "layer1.1.relu_1", "layer2.0.downsample.1",
                             "layer2.0.bn2", "conv1"] + [s.layer for s in stages])
    return {"model": model, "meta": meta, "x": x, "rgb": meta.preprocessing.denormalize(x[0]), "stages": stages, "cap": cap}


# --- the pictures of `show` and the report -------------------------------------------------------------

def _features(r):
    from resnet_xray.viz.canvas import stamp
    from resnet_xray.viz.features import feature_figure, feature_grid

    return stamp(feature_figure(feature_grid("layer1.0.relu_1", r["cap"].maps["layer1.0.relu_1"])), r["meta"])


def _kernels(layer):
    def build(r):
        from resnet_xray.viz.canvas import stamp
        from resnet_xray.viz.kernels import KernelsOptions, kernel_figure

        return stamp(kernel_figure(r["model"], KernelsOptions(layer))[0], r["meta"])
    return build


def _cam(r):
    from resnet_xray.viz.cam import CamOptions, cam_figure, compute_cams
    from resnet_xray.viz.canvas import stamp

    res = compute_cams(r["model"], r["x"], r["meta"].class_names, CamOptions(methods=("gradcam",)))
    return stamp(cam_figure(r["rgb"], res), r["meta"])


def _stages(r):
    from resnet_xray.viz.canvas import stamp
    from resnet_xray.viz.stages import stages_figure

    return stamp(stages_figure(r["rgb"], r["stages"], r["cap"].maps), r["meta"])


def _residual(r):
    from resnet_xray.viz.residual import residual_figure

    return residual_figure(r["cap"].trace.blocks, RANDOM)


def _gradflow(r):
    from resnet_xray.tracing.gradflow import GradFlowOptions, measure_gradflow
    from resnet_xray.viz.gradflow import gradflow_figure

    return gradflow_figure(measure_gradflow(GradFlowOptions(arch="resnet18", weights="random", batch_size=2, input_size=32), quiet=True))


def _preprocessing(size):
    def build(r):
        from resnet_xray.reporting import story

        img = load_image(bundled_cat()).resize(size)  # a portrait photo once made the titles run into each other
        pp = Preprocessing.seed()
        return story.preprocessing_steps(img, pp, pp(img).unsqueeze(0), RANDOM)[1]
    return build


def _kernel_worked(r):
    from resnet_xray.reporting import story

    return story.kernel_worked(r["model"].conv1, r["x"], r["cap"].maps["conv1"], r["rgb"], RANDOM)[1]


def _fusion(r):
    from resnet_xray.reporting import story

    m = r["cap"].maps
    return story.channel_fusion(r["model"].layer1[0].conv1, "layer1.0.conv1", m["maxpool"], m["layer1.0.conv1"], RANDOM)[1]


def _shortcuts(r):
    from resnet_xray.reporting import story

    m = r["cap"].maps
    _, terms = story.shortcut_options(r["model"].layer2[0], "layer2.0", m["layer1.1.relu_1"], m["layer2.0.downsample.1"],
                                      m["layer2.0.bn2"])
    return story.shortcut_figure(*terms, "layer2.0", RANDOM)


def _walkthrough(r):
    from resnet_xray.reporting import story
    from resnet_xray.tracing import walkthrough

    steps = walkthrough(r["model"], block="layer1.0", trace=r["cap"].trace).to_dict()["steps"]
    return story.walkthrough_figure(steps, "layer1.0", RANDOM)


def _cost(r):
    from resnet_xray.dissect import AnatomyOptions, analyze
    from resnet_xray.reporting import story
    from resnet_xray.reporting.html import STAGE_LABELS

    by_stage = analyze(r["model"], "resnet18", AnatomyOptions(input_size=64)).to_dict()["breakdown"]["by_stage"]
    return story.cost_figure(by_stage, STAGE_LABELS, RANDOM)


def _conclusion(r):
    from resnet_xray.reporting import story

    stages = [{"stage": s.stage, "shape": list(s.shape), "receptive_field": rf}
              for s, rf in zip(r["stages"], (11, 43, 99, 211, 435))]
    return story.conclusion_figure(stages, RANDOM)


# --- charts of deploy, optimize and prune, from numbers shaped like a real run's --------------------------

def _timing(ms: float, spread: float = 0.1):
    from resnet_xray.deploy.bench import TimingStats

    s = ms / 1e3
    return TimingStats(s, 2 * spread * s, s * (1 - spread), s * (1 + spread), s, s * 0.8, s * 1.5, 30)


def _bench(r=None):
    from resnet_xray.deploy.bench import BenchOptions, BenchResult, BenchRow
    from resnet_xray.deploy.charts import bench_figure

    rows = []
    for b in (1, 8):
        for k, (path, ms) in enumerate((("eager fp32", 30), ("eager channels_last", 29), ("fused", 25), ("torch.compile", 22),
                                        ("ort fp32", 18), ("ort int8", 9), ("pytorch int8 (fx x86)", 11), ("openvino fp32", 15),
                                        ("openvino int8", 7), ("openvino int8 (nncf)", 6.5))):
            rows.append(BenchRow(path, b, "cpu", "ok", stats=_timing(ms * b ** 0.8), speedup=30 / ms))
    rows.append(BenchRow("tensorrt fp16", 1, "cuda", "skipped", "no GPU"))
    machine = {"cpu": "Intel(R) Xeon(R) Platinum 8480+ with a very long model name string", "threads": 2}
    return bench_figure(BenchResult(rows, 1_800_000_000, 900.0, machine, BenchOptions(progress=False), model="resnet18 (runs/ft/best.pt)"))


def _bench_models(r=None):
    from resnet_xray.deploy.charts import ChartBar, latency_figure

    bars = [ChartBar("exp/model.onnx (onnxruntime fp32)", _timing(30), 1.0, "fp"),
            ChartBar("exp/m18.int8.xml (openvino int8)", _timing(12, 0.5), 2.5, "int8", True),
            ChartBar("exp/model.xml (openvino fp32)", _timing(33), 0.91, "fp", True)]
    return latency_figure(bars, "3 deployed model(s), batch 1\nAMD EPYC, 2 thread(s)", "the first, exp/model.onnx")


def _candidates():
    from resnet_xray.deploy.optimize import Candidate

    rows = [("eager fp32", "eager", False, 40, .90), ("ort fp32", "onnxruntime", False, 20, .90),
            ("ort int8", "onnxruntime", False, 8, .89), ("openvino fp32", "openvino", False, 15, .90),
            ("openvino int8 (qdq)", "openvino", False, 6, .89), ("openvino int8 (nncf)", "openvino", False, 6.1, .89),
            ("torch int8 (fx)", "torch", False, 9, .885), ("pruned eager fp32", "eager", True, 20, .88),
            ("pruned ort fp32", "onnxruntime", True, 9, .88), ("pruned ort int8", "onnxruntime", True, 4, .87),
            ("pruned openvino fp32", "openvino", True, 7, .88), ("pruned openvino int8 (qdq)", "openvino", True, 3, .875),
            ("pruned openvino int8 (nncf)", "openvino", True, 3.05, .875), ("pruned torch int8 (fx)", "torch", True, 5, .87),
            ("openvino int8+fp32 (mixed)", "openvino", False, 7.5, .90)]
    cands = [Candidate(name, eng, "int8" if "int8" in name else "fp32", pruned, 0.5 if pruned else 1.0, None, accuracy=acc,
                       agreement=0.99, latency_ms=ms, speedup=40 / ms, status="kept",
                       reason=f"within budget, {ms / 3:.2f}x the winner's latency") for name, eng, pruned, ms, acc in rows]
    cands[11].status, cands[11].reason = "winner", "fastest within budget"
    return cands


def _optimize(r=None):
    from resnet_xray.deploy.charts import optimize_figure

    return optimize_figure(_candidates(), 0.90, 2.0)


def _prune_rounds(r=None):
    from resnet_xray.pruning.figures import rounds_figure

    base = {"round": 0, "macs": 1.82e9, "accuracy": 0.92, "eager_ms": 30.0, "ort_ms": 12.0}
    rounds = [{"round": k, "macs": m, "accuracy": a, "eager_ms": e, "ort_ms": o}
              for k, (m, a, e, o) in enumerate(((1.5e9, 0.921, 26, 10), (1.49e9, 0.92, 25.5, 9.9), (1.2e9, 0.91, 21, 8),
                                               (0.9e9, 0.905, 17, 6.5), (0.89e9, 0.904, 16.9, 6.4)), 1)]
    return rounds_figure(base, rounds, title="resnet18, l1, per-group ranking")


def _prune_importance(r=None):
    from resnet_xray.pruning.analyze import GroupImportance
    from resnet_xray.pruning.figures import importance_figure

    rng = np.random.default_rng(0)
    groups = []
    for s in range(1, 5):
        for b in range(2):
            for c in (1, 2):
                name = f"layer{s}.{b}.conv{c}"
                scores = rng.gamma(2.0, 0.5, 32 * s).tolist()
                members = [name] * (8 if c == 2 else 2)
                groups.append(GroupImportance(name, members, len(scores), scores, list(range(0, len(scores), 3))))
    return importance_figure(groups, title="resnet18: l1 importance, ratio 0.3 (per-group)")


def _confusion(r=None):
    import matplotlib.pyplot as plt

    from resnet_xray.train.metrics import save_confusion_png

    figs = []
    real_close = plt.close
    plt.close = figs.append  # keep the figure the function draws and closes
    try:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as d:
            names = ["triangle", "square", "circle with a long name", "star"]
            save_confusion_png(torch.tensor([[5, 1, 0, 0], [0, 6, 0, 0], [1, 0, 4, 1], [0, 0, 0, 6]]), names, Path(d) / "c.png")
    finally:
        plt.close = real_close
    return figs[0]


MODEL_FIGURES = {
    "features": _features, "kernels conv1": _kernels("conv1"), "kernels 3x3": _kernels("layer3.0.conv2"),
    "kernels 1x1": _kernels("layer2.0.downsample.0"), "cam": _cam, "stages": _stages, "residual": _residual,
    "report preprocessing (landscape)": _preprocessing((451, 300)), "report preprocessing (portrait)": _preprocessing((300, 451)),
    "report preprocessing (tiny)": _preprocessing((40, 30)), "report kernel by hand": _kernel_worked,
    "report channel fusion": _fusion, "report shortcuts": _shortcuts, "report bottleneck walkthrough": _walkthrough,
    "report cost": _cost, "report conclusion": _conclusion,
}
CHARTS = {
    "bench": _bench, "bench --model": _bench_models, "optimize": _optimize, "prune rounds": _prune_rounds,
    "prune importance": _prune_importance, "finetune confusion": _confusion,
}


@pytest.mark.parametrize("name", list(MODEL_FIGURES))
def test_model_figures_have_no_overlapping_text(name, r18):
    fig = MODEL_FIGURES[name](r18)
    assert isinstance(fig, Figure)
    assert text_problems(fig) == []


@pytest.mark.parametrize("name", list(CHARTS))
def test_charts_have_no_overlapping_text(name):
    assert text_problems(CHARTS[name]()) == []


@pytest.mark.slow
def test_gradflow_figure_has_no_overlapping_text(r18):
    assert text_problems(_gradflow(r18)) == []


# --- the checker itself ---------------------------------------------------------------------------------

def test_the_checker_sees_overlaps_cut_offs_and_labels_over_pictures():
    from resnet_xray.viz.canvas import new_figure

    fig = new_figure(4, 3)
    ax = fig.add_subplot()
    ax.imshow(np.zeros((4, 4)))
    ax.text(1, 1, "one label")
    ax.text(1, 1, "another")
    fig.text(0.99, 0.5, "off the edge")
    fig.text(0.5, 0.5, "over the picture")
    found = text_problems(fig)
    assert any("'one label' overlaps 'another'" in p for p in found)
    assert any("'off the edge' is cut off" in p for p in found)
    assert any("'over the picture' lies over axes" in p for p in found)


def test_the_checker_takes_rotated_labels_as_drawn():
    """Labels rotated 45 degrees side by side: their boxes overlap, the text does not."""
    from resnet_xray.viz.canvas import new_figure

    fig = new_figure(6, 3)
    ax = fig.add_subplot()
    ax.set_xticks(range(12), [f"layer{k}.0.conv" for k in range(12)], rotation=45, fontsize=7)
    assert text_problems(fig) == []
    ax.set_xticks(range(12), [f"layer{k}.0.conv1 with a much longer name" for k in range(12)], rotation=10, fontsize=9)
    assert any("overlaps" in p for p in text_problems(fig))


# --- what the figures must say ------------------------------------------------------------------------------

def _legend_texts(fig) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return [t.get_text() for lg in legends for t in lg.get_texts()]


def test_bench_chart_names_the_model_and_explains_its_colours():
    fig = _bench()
    titles = " ".join(ax.get_title() for ax in fig.axes) + fig.get_suptitle()
    assert "resnet18 (runs/ft/best.pt)" in titles
    assert {"eager PyTorch (the baseline)", "INT8", "OpenVINO"} <= set(_legend_texts(fig))


def test_optimize_legend_names_only_lines_that_are_drawn():
    def pareto_drawn(fig) -> bool:
        return any(len(line.get_xdata()) >= 2 and line.get_linestyle() == "--" for ax in fig.axes for line in ax.lines)

    from resnet_xray.deploy.charts import optimize_figure

    cands = _candidates()
    fig = optimize_figure(cands, 0.90, 2.0)
    assert "Pareto front" in _legend_texts(fig) and pareto_drawn(fig)
    alone = optimize_figure([cands[11]], 0.90, 2.0)  # one candidate: a front of one point has no line
    assert "Pareto front" not in _legend_texts(alone) and not pareto_drawn(alone)


def test_optimize_table_breaks_why_between_words():
    from resnet_xray.deploy.optimize import OptimizeResult

    cands = _candidates()
    long = "within 5% of the fastest (pruned openvino int8 (nncf)) and agrees more with FP32 (99.0% against 97.5%)"
    cands[3].reason = long
    res = OptimizeResult(None, 0.9, 2.0, cands, cands[11], None, None, {}, None, 1.0)
    text = res.table()
    why_col = text.splitlines()[0].index("why")
    said = " ".join(line[why_col:].strip() for line in text.splitlines()[2:] if line[why_col:].strip()
                    and (line.startswith("openvino fp32") or not line[:why_col].strip()))
    assert long in said
    assert all(len(line[why_col:].rstrip()) <= 48 for line in text.splitlines()[2:])


def test_weights_warning_in_title_and_label_under_the_picture():
    from resnet_xray.viz.canvas import new_figure, stamp, weights_warning

    fig = new_figure(6, 3)
    fig.add_subplot().imshow(np.zeros((4, 4)))
    fig.suptitle("what it shows")
    stamp(fig, RANDOM)
    title = " ".join(fig.get_suptitle().split())  # wrapped to the figure's width
    assert title == f"{weights_warning(RANDOM)} what it shows"
    assert "weights: random (seed 0)" in fig._supxlabel.get_text()
    trained = new_figure(6, 3)
    trained.add_subplot().imshow(np.zeros((4, 4)))
    stamp(trained, TRAINED)
    assert weights_warning(TRAINED) is None and trained.get_suptitle() == ""
    assert "unknown weights" in weights_warning(WeightsInfo.none("the model file does not say"))
    plain = stamp(new_figure(6, 3), RANDOM, warn=False)
    assert plain.get_suptitle() == ""


def test_bench_models_writes_the_chart(tmp_path, capsys):
    from resnet_xray.cli import main
    from resnet_xray.deploy.onnx import ExportOptions, export_onnx, sidecar_path
    from resnet_xray.model import ModelMeta

    from .test_deploy_quantize import TinyResNet

    pre = Preprocessing(resize=36, crop=32)
    meta = ModelMeta("resnet18", "random (seed 0)", [f"c{k}" for k in range(4)], pre, False)
    a = export_onnx(TinyResNet(4).eval(), tmp_path / "a.onnx", ExportOptions(exporter="torchscript"), meta)
    b = tmp_path / "b.onnx"
    shutil.copy(a, b)
    shutil.copy(sidecar_path(a), sidecar_path(b))
    chart = tmp_path / "chart.png"
    assert main(["bench", "--model", str(a), "--model", str(b), "--repeats", "2", "-o", str(chart)]) == 0
    assert f"chart: {chart}" in capsys.readouterr().out
    with Image.open(chart) as im:
        assert im.format == "PNG"
    chart.unlink()
    assert main(["bench", "--model", str(a), "--model", str(b), "--repeats", "2", "-o", str(chart), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["chart"] == str(chart) and chart.exists()
