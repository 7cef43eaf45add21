"""Compute everything the report shows, from the model and the image in hand, then write it.

One traced forward pass gives every layer's statistics and keeps full maps only
for layers that get a feature grid; Grad-CAM and gradient flow run their own
passes. Pictures are rendered here and embedded by :mod:`resnet_xray.reporting.html`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from contextlib import contextmanager
from functools import cached_property
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import nn

from ..atomic import StagedFiles, jsonable, writable_dir
from ..deploy.layerchart import layers_figure, network_rows, read_layers_doc
from ..dissect import AnatomyOptions, analyze
from ..errors import XrayError
from ..image import load_image
from ..locks import output_lock
from ..model import ModelMeta
from ..options import OptionError, at_least, batch_fits, image_side, one_of, option
from ..progress import progress
from ..provenance import WeightsInfo
from ..tracing.walkthrough import walkthrough
from ..tracing.gradflow import GradFlowOptions, measure_gradflow, rms_ratio
from ..units import times
from ..viz.cam import CamOptions, cam_figure, check_class_index, compute_cams
from ..viz.canvas import figure_png, stamp
from ..viz.features import feature_figure, feature_grid, grid_jpeg
from ..viz.gradflow import gradflow_figure
from ..viz.kernels import KernelsOptions, conv_layers, kernel_figure, kernel_image
from ..viz.maps import capture
from ..viz.residual import residual_figure
from ..viz.stages import StagesOptions, stage_outputs, stages_figure
from . import story
from .html import STAGE_LABELS, render_html
from .sections import SECTION_IDS, check_sections


# Layers that get a feature grid (and so keep full maps during the trace). A BatchNorm output is, per
# channel, an affine rescaling of the conv output just above it, so its grid would repeat that one.
GRID_TYPES = ("conv", "relu", "add", "maxpool")


@dataclass
class ReportOptions:
    out_dir: Path = option(Path("out/report"), "output folder")
    grid_order: str = option("top", 'navigator grids: the 64 most active channels ("first": channels 0-63)')
    grid_tile: int = option(28, "pixels per channel tile in the navigator grids; keeps the page small")
    cam_methods: tuple[str, ...] = option(("gradcam",), "`show cam --method` draws the others; each costs a backward pass")
    cam_class: int | None = option(None, "Grad-CAM class index (default: the prediction)")
    gradflow: bool = option(True, "the gradient-flow section (its slowest part)")
    gradflow_batch: int = option(2, "a small batch keeps the report fast on two cores")
    gradflow_size: int = option(64, "input side for the gradient-flow measurement (its cost grows with the square)")
    sections: tuple[str, ...] | None = option(None, "comma-separated subset, kept in the article's order: input,kernel,channels,conv1,bottleneck,shortcuts,stages,residual,gradflow,cost,deployed,cam,conclusion (default: all)")
    layers: str | None = option(None, "a file `resnet-xray layers --json` wrote: the deployed section shows each layer's time "
                                      "on each engine and its INT8 error (without it, that section is left out)")
    quiet: bool = option(False, "no progress display on stderr")

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        one_of("grid_order", self.grid_order, ("top", "first"))
        at_least("grid_tile", self.grid_tile, 8)
        if self.cam_class is not None and self.cam_class < 0:
            raise OptionError("cam_class", self.cam_class, "out of range; class indices start at 0")
        at_least("gradflow_batch", self.gradflow_batch, 2)  # batch statistics need two images
        image_side("gradflow_size", self.gradflow_size)
        batch_fits("gradflow_batch", self.gradflow_batch, self.gradflow_size, training=True)
        if self.sections is not None:
            self.sections = check_sections(tuple(self.sections))
        if self.layers is not None:
            read_layers_doc(self.layers, "--layers")  # now, not after the forward pass


@dataclass
class ReportResult:
    html: Path
    json: Path
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per section
    html_bytes: int = 0
    total_s: float = 0.0  # wall time of the whole build
    weights: WeightsInfo | None = None  # the weights' provenance, set by the verb that ran

    def to_dict(self) -> dict[str, Any]:
        return {"html": str(self.html), "json": str(self.json), "html_bytes": self.html_bytes, "total_s": self.total_s,
                "seconds": dict(self.seconds), "weights": self.weights.to_dict() if self.weights else None}


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_uri(fig) -> str:
    return data_uri(figure_png(fig), "image/png")


def jpeg_uri(fig, quality: int = 85) -> str:
    """Figures that are mostly pictures (feature maps, overlays) are far smaller as JPEG than PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="jpeg", dpi=100, pil_kwargs={"quality": quality})
    return data_uri(buf.getvalue(), "image/jpeg")


def array_uri(rgb: np.ndarray, fmt: str = "PNG", quality: int = 85) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return data_uri(buf.getvalue(), "image/jpeg" if fmt == "JPEG" else "image/png")


def weights_info(meta: ModelMeta) -> dict[str, Any]:
    """The ``"weights"`` object every output carries: where the weights came from, and a warning for random ones."""
    return WeightsInfo.of(meta).to_dict()


class _Clock:
    def __init__(self, bar=None) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}  # process CPU seconds: what the section costs on a busy, shared machine
        self.bar = bar

    @contextmanager
    def section(self, name: str):
        if self.bar is not None:
            self.bar.stage(name)
        t, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - t, 3)
            self.cpu[name] = round(time.process_time() - c, 3)


def _projection_block(model: nn.Module) -> str | None:
    """The first block whose shortcut is a projection (layer1.0 in a ResNet-50)."""
    for name, m in model.named_modules():
        if getattr(m, "downsample", None) is not None and isinstance(m.downsample, nn.Sequential) and len(m.downsample) >= 2:
            return name
    return None


def build_report(image: str | os.PathLike, model: nn.Module, meta: ModelMeta, options: ReportOptions | None = None) -> ReportResult:
    """Write ``report.html`` (self-contained) and ``report.json`` for ``image`` into ``options.out_dir``.

    Args:
        image: the photo to follow through the network.
        model: a torchvision-style ResNet (eval mode is set here).
        meta: from :func:`resnet_xray.model.load_model`: labels, preprocessing, provenance.
        options: output folder, which sections, and the knobs that trade detail for speed.

    Returns:
        Paths of both files and the wall time of each section.
    """
    opts = options or ReportOptions()
    chosen = check_sections(opts.sections)
    if not opts.gradflow:
        chosen = tuple(s for s in chosen if s != "gradflow")
    if not opts.layers:
        chosen = tuple(s for s in chosen if s != "deployed")
    out_dir = writable_dir(opts.out_dir)  # fail before any compute if it cannot be written
    if opts.cam_class is not None:
        check_class_index(opts.cam_class, len(meta.class_names))
    with output_lock(out_dir, "-o"), progress("report", total=3 + len(chosen) + 1, quiet=opts.quiet) as bar:  # one writer per folder
        return _build(image, model, meta, opts, chosen, out_dir, _Clock(bar))


@dataclass
class _Page:
    """One report in the making: the forward pass every section reads, and what the sections add."""

    model: nn.Module
    meta: ModelMeta
    opts: ReportOptions
    chosen: tuple[str, ...]
    clock: _Clock
    img: Any  # the PIL image
    x: Any  # the preprocessed batch of one
    rgb: np.ndarray  # what the network sees, de-normalised
    anatomy: Any
    names: list[str]  # anatomy layer names, in order
    proj: str | None  # the first block with a projection shortcut
    fuse_layer: str | None  # the 1x1 conv the channels section explains
    cap: Any  # the trace with the kept maps
    data: dict[str, Any] = field(default_factory=dict)  # report.json
    pics: dict[str, Any] = field(default_factory=dict)  # data URIs for the page

    @property
    def wlabel(self) -> Any:
        """What every picture is stamped with: the weights' source, and whether they were trained."""
        return WeightsInfo.of(self.meta)

    @cached_property
    def stats(self) -> dict[str, dict[str, Any]]:
        return {s.name: s.to_dict() for s in self.cap.trace.layers}

    @cached_property
    def convs(self) -> dict[str, nn.Conv2d]:
        return conv_layers(self.model)


def _build(image, model: nn.Module, meta: ModelMeta, opts: ReportOptions, chosen: tuple[str, ...], out_dir: Path,
           clock: _Clock) -> ReportResult:
    t0 = time.perf_counter()
    page = _forward(image, model, meta, opts, chosen, clock)
    _summary(page, image)
    for sid, build in _SECTIONS:
        if sid in chosen:
            build(page)
        if sid == "stages":  # the kept maps are not needed past this point: free them before the backward passes
            page.cap.trace.maps.clear()
            page.cap.maps.clear()
    return _write(page, out_dir, t0)


def _forward(image, model: nn.Module, meta: ModelMeta, opts: ReportOptions, chosen: tuple[str, ...], clock: _Clock) -> _Page:
    """Load the image, measure the anatomy, and run the one traced forward pass, keeping the maps the sections draw."""
    model.eval()
    with clock.section("load"):
        img = load_image(image)
        x = meta.preprocessing(img).unsqueeze(0)
        rgb = meta.preprocessing.denormalize(x[0])
    with clock.section("anatomy"):
        anatomy = analyze(model, meta.arch, AnatomyOptions(input_size=x.shape[-1]))
    names = [r.name for r in anatomy.layers]
    proj = _projection_block(model)
    fuse_layer = "layer1.0.conv1" if "layer1.0.conv1" in names else None
    keep: set[str] = set()
    if "stages" in chosen or "conv1" in chosen:
        keep |= {r.name for r in anatomy.layers if r.type in GRID_TYPES and len(r.output_shape) == 3}
    if {"kernel", "conv1"} & set(chosen):
        keep.add("conv1")
    if "channels" in chosen and fuse_layer:
        keep |= {fuse_layer, names[names.index(fuse_layer) - 1]}
    if "shortcuts" in chosen and proj:
        first = next(i for i, n in enumerate(names) if n.startswith(proj + "."))
        f_name = next((n for n in (f"{proj}.bn3", f"{proj}.bn2") if n in names), None)
        keep |= {names[first - 1], f"{proj}.downsample.1"} | ({f_name} if f_name else set())
    with clock.section("trace"):
        cap = capture(model, x, keep)
    return _Page(model, meta, opts, chosen, clock, img, x, rgb, anatomy, names, proj, fuse_layer, cap)


def _summary(page: _Page, image) -> None:
    """What every report carries whatever its sections: provenance, prediction, input, blocks, totals."""
    meta, img = page.meta, page.img
    page.data.update({"image": str(image), "subject": Path(str(image)).name, "weights": weights_info(meta), "model": meta.to_dict(),
                      "options": asdict(page.opts), "sections": list(page.chosen)})
    probs = page.cap.logits.float().softmax(dim=1)[0]
    top = probs.topk(min(5, probs.numel()))
    page.data["prediction"] = [
        {"index": int(i), "label": meta.class_names[int(i)] if int(i) < len(meta.class_names) else f"class_{int(i)}", "prob": float(p)}
        for p, i in zip(top.values, top.indices)
    ]
    thumb = img.copy()
    thumb.thumbnail((640, 640))
    page.pics["original"] = array_uri(np.asarray(thumb), "JPEG", 88)
    page.pics["seen"] = array_uri(page.rgb, "PNG")
    page.data["input"] = {"original_size": list(img.size), "tensor_shape": list(page.x.shape), "transforms": meta.preprocessing.source}
    page.data["blocks"] = [b.to_dict() for b in page.cap.trace.blocks]
    page.data["anatomy"] = {k: v for k, v in page.anatomy.to_dict().items() if k != "layers"}


def _input_section(page: _Page) -> None:
    with page.clock.section("input"):
        page.data["preprocessing"], fig = story.preprocessing_steps(page.img, page.meta.preprocessing, page.x, page.wlabel)
        page.pics["preprocessing"] = jpeg_uri(fig)


def _kernel_section(page: _Page) -> None:
    conv1 = page.convs.get("conv1")
    if conv1 is None or conv1.in_channels != 3:
        return
    with page.clock.section("kernel"):
        page.data["kernel_worked"], fig = story.kernel_worked(conv1, page.x, page.cap.maps["conv1"], page.rgb, page.wlabel)
        page.pics["kernel_worked"] = png_uri(fig)


def _channels_section(page: _Page) -> None:
    layer, convs, names = page.fuse_layer, page.convs, page.names
    if not layer or layer not in convs or convs[layer].groups != 1:
        return
    with page.clock.section("channels"):
        src = names[names.index(layer) - 1]
        page.data["fusion"], fig = story.channel_fusion(convs[layer], layer, page.cap.maps[src], page.cap.maps[layer], page.wlabel)
        page.data["fusion"]["input_from"] = src
        page.pics["fusion"] = png_uri(fig)


def _conv1_section(page: _Page) -> None:
    convs, maps, wlabel = page.convs, page.cap.maps, page.wlabel
    if "conv1" not in convs:
        return
    with page.clock.section("conv1"):
        fig, caption = kernel_figure(page.model, KernelsOptions("conv1"))
        page.pics["conv1"] = png_uri(stamp(fig, wlabel))
        page.data["conv1_kernels"] = {"caption": caption}
        if wlabel.known_trained and convs["conv1"].in_channels == 3:  # interpretive counts only for weights known to be trained
            counts = story.classify_kernels(convs["conv1"].weight)
            counts["random_init_baseline"] = story.kernel_baseline(convs["conv1"])
            page.data["conv1_kernels"]["measured"] = counts
        fmap_name = "relu" if "relu" in maps else "conv1"
        g = feature_grid(fmap_name, maps[fmap_name], "first", 64)
        page.pics["conv1_maps"] = jpeg_uri(stamp(feature_figure(g), wlabel))
        page.data["conv1_maps"] = {"layer": fmap_name, "caption": g.caption(), "zero_frac": page.stats.get(fmap_name, {}).get("zero_frac")}


def _bottleneck_section(page: _Page) -> None:
    with page.clock.section("bottleneck"):
        try:
            page.data["walkthrough"] = walkthrough(page.model, block="layer1.0", trace=page.cap.trace).to_dict()
            page.pics["walkthrough"] = png_uri(story.walkthrough_figure(page.data["walkthrough"]["steps"], "layer1.0", page.wlabel))
        except (ValueError, KeyError, AttributeError) as e:  # a model without a torchvision layer1.0 block
            page.data["walkthrough"] = {"unavailable": str(e)}


def _shortcuts_section(page: _Page) -> None:
    proj, names, maps, blocks = page.proj, page.names, page.cap.maps, page.cap.trace.blocks
    with page.clock.section("shortcuts"):
        if proj is None:
            page.data["shortcuts"] = {"unavailable": "this model has no projection shortcut"}
            return
        first = next(i for i, n in enumerate(names) if n.startswith(proj + "."))
        f_name = next(n for n in (f"{proj}.bn3", f"{proj}.bn2") if n in names)
        shortcuts, terms = story.shortcut_options(page.model.get_submodule(proj), proj, maps[names[first - 1]],
                                                  maps[f"{proj}.downsample.1"], maps[f_name])
        page.pics["shortcuts"] = png_uri(story.shortcut_figure(*terms, proj, page.wlabel))
        shortcuts["projections"] = [{"block": b.name, "shortcut_from": b.shortcut_from} for b in blocks if b.projection]
        shortcuts["identity_blocks"] = sum(not b.projection for b in blocks)
        page.data["shortcuts"] = shortcuts


def _stages_section(page: _Page) -> None:
    with page.clock.section("stages"):
        page.data["layers"] = [_layer_entry(page, r) for r in page.anatomy.layers]
        stages = stage_outputs(page.anatomy.layers)
        page.pics["stages"] = jpeg_uri(stamp(stages_figure(page.rgb, stages, page.cap.maps, StagesOptions(channels=8)), page.wlabel))
        rf = {r.name: r.receptive_field for r in page.anatomy.layers}
        stats = page.stats
        sheets = []
        for st in stages:
            g = feature_grid(st.layer, page.cap.maps[st.layer], "top", 64)
            page.pics.setdefault("stage_grids", {})[st.stage] = jpeg_uri(stamp(feature_figure(g), page.wlabel))
            sheets.append({"stage": st.stage, "layer": st.layer, "shape": list(st.shape), "channels": g.channels, "vmin": g.vmin,
                           "vmax": g.vmax, "receptive_field": rf.get(st.layer), "zero_frac": stats.get(st.layer, {}).get("zero_frac")})
        page.data["stages"] = sheets


def _layer_entry(page: _Page, r) -> dict[str, Any]:
    """One row of the layer navigator: the anatomy row, its statistics, its grid and its kernels."""
    opts, maps, convs = page.opts, page.cap.maps, page.convs
    entry: dict[str, Any] = {**r.to_dict(), "stats": page.stats.get(r.name)}
    if r.type == "bn":
        entry["grid_note"] = "no grid: per channel, a BatchNorm output is an affine rescaling of the conv output above it"
    if r.name in maps and r.type in GRID_TYPES:
        g = feature_grid(r.name, maps[r.name], opts.grid_order, 64, opts.grid_tile)
        entry["grid"] = {"channels": g.channels, "order": g.order, "vmin": g.vmin, "vmax": g.vmax, "caption": g.caption()}
        page.pics.setdefault("grids", {})[r.name] = data_uri(grid_jpeg(g), "image/jpeg")
    if r.type == "conv" and r.name in convs:
        kimg, kcap = kernel_image(convs[r.name], r.name, max_side=128)
        entry["kernel_picture"] = kcap
        page.pics.setdefault("kernels", {})[r.name] = array_uri(kimg)
    return entry


def _residual_section(page: _Page) -> None:
    with page.clock.section("residual"):
        page.pics["residual"] = png_uri(residual_figure(page.cap.trace.blocks, page.wlabel))


def _gradflow_section(page: _Page) -> None:
    with page.clock.section("gradflow"):
        page.data["gradflow"], page.pics["gradflow"] = _gradflow(page.meta, page.opts)


def _cam_section(page: _Page) -> None:
    with page.clock.section("cam"):
        res = compute_cams(page.model, page.x, page.meta.class_names,
                           CamOptions(class_index=page.opts.cam_class, methods=page.opts.cam_methods))
        page.pics["cam"] = jpeg_uri(stamp(cam_figure(page.rgb, res), page.wlabel))
        page.data["cam"] = res.to_dict()


def _cost_section(page: _Page) -> None:
    with page.clock.section("cost"):
        page.pics["cost"] = png_uri(story.cost_figure(page.data["anatomy"]["breakdown"]["by_stage"], STAGE_LABELS, page.wlabel))


def _deployed_section(page: _Page) -> None:
    with page.clock.section("deployed"):
        doc = read_layers_doc(page.opts.layers, "--layers")
        keep = ("model", "reference", "keys", "end_to_end_ms", "sum_check", "error_engine", "images", "machine")
        page.data["deployed"] = {**{k: doc.get(k) for k in keep}, "file": str(page.opts.layers), "rows": network_rows(doc)}
        import matplotlib.pyplot as plt

        fig = layers_figure(doc)
        page.pics["deployed"] = png_uri(fig)
        plt.close(fig)


def _conclusion_section(page: _Page) -> None:
    with page.clock.section("conclusion"):
        if "stages" in page.data:
            page.pics["conclusion"] = png_uri(story.conclusion_figure(page.data["stages"], page.wlabel))


# The order the sections are built in (the page shows them in SECTION_IDS order): everything that reads
# the kept maps first, so they can be freed before the backward passes of gradflow and CAM.
_SECTIONS = (
    ("input", _input_section), ("kernel", _kernel_section), ("channels", _channels_section), ("conv1", _conv1_section),
    ("bottleneck", _bottleneck_section), ("shortcuts", _shortcuts_section), ("stages", _stages_section),
    ("residual", _residual_section), ("gradflow", _gradflow_section), ("cam", _cam_section), ("cost", _cost_section),
    ("deployed", _deployed_section), ("conclusion", _conclusion_section),
)
assert {sid for sid, _ in _SECTIONS} == set(SECTION_IDS)


def _write(page: _Page, out_dir: Path, t0: float) -> ReportResult:
    """report.json and the self-contained report.html, each written atomically."""
    clock = page.clock
    with clock.section("write"):
        page.data["timings_s"] = clock.seconds
        page.data["timings_s"]["total_before_write"] = round(time.perf_counter() - t0, 3)
        page.data["cpu_s"] = clock.cpu
        doc = jsonable(page.data)
        html = render_html(doc, page.pics)
        json_path, html_path = out_dir / "report.json", out_dir / "report.html"
        # The pair is swapped in whole: a full disk must not leave a new report.json beside an old or missing page.
        with StagedFiles([html_path, json_path]) as stage:
            try:
                stage.path(json_path).write_bytes(json.dumps(doc, indent=1).encode())
                stage.path(html_path).write_bytes(html.encode("utf-8"))
            except OSError as e:
                raise XrayError(f"-o {out_dir}: cannot write the report ({e.strerror or e}); nothing was replaced") from None
            stage.commit()
    return ReportResult(html_path, json_path, clock.seconds, len(html.encode("utf-8")), round(time.perf_counter() - t0, 3))


def _gradflow(meta: ModelMeta, opts: ReportOptions) -> tuple[dict[str, Any], str]:
    # At initialisation (random weights), as the article's argument is about; the report's model is not changed.
    gopts = GradFlowOptions(arch=meta.arch, weights="random", batch_size=opts.gradflow_batch, input_size=opts.gradflow_size)
    res = measure_gradflow(gopts, quiet=True)  # the report's own display already names this stage
    doc = res.to_dict()
    said, first, of = [], "", f"{meta.arch}'s"
    for regime, nets in res.init.items():
        r, p = nets["resnet"], nets["plain"]
        first = r.boundaries[1]["name"]
        said.append(f"{times(rms_ratio(p.rms(first), r.rms(first)), of)} with {regime} statistics")
    doc["summary"] = (f"At initialisation, the gradient RMS at the stem boundary ({first}) of the same network without "
                      f"shortcuts is " + " and ".join(said) + ".")
    return doc, png_uri(gradflow_figure(res))

