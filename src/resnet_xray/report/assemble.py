"""Compute everything the report shows, from the model and the image in hand, then write it.

One traced forward pass gives every layer's statistics and keeps full maps only
for layers that get a feature grid; Grad-CAM and gradient flow run their own
passes. Pictures are rendered here and embedded by :mod:`resnet_xray.report.html`.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import nn

from ..anatomy import AnatomyOptions, analyze
from ..errors import XrayError
from ..image import load_image
from ..model import ModelMeta
from ..viz.cam import CamOptions, cam_figure, check_class_index, compute_cams
from ..viz.canvas import figure_png, writable_dir, write_bytes_atomic
from ..viz.features import feature_figure, feature_grid, grid_jpeg
from ..viz.kernels import KernelsOptions, conv_layers, kernel_figure, kernel_image
from ..viz.maps import capture
from ..viz.stages import StagesOptions, stage_outputs, stages_figure


# Layers that get a feature grid (and so keep full maps during the trace). A BatchNorm output is, per
# channel, an affine rescaling of the conv output just above it, so its grid would repeat that one.
GRID_TYPES = ("conv", "relu", "add", "maxpool")


@dataclass
class ReportOptions:
    out_dir: Path = Path("out/report")  # report.html and report.json go here
    grid_order: str = "top"  # navigator grids: the 64 most active channels ("first": channels 0-63)
    grid_tile: int = 28  # pixels per channel tile in the navigator grids; keeps the page small
    cam_methods: tuple[str, ...] = ("gradcam", "gradcam++")
    cam_class: int | None = None  # None: the predicted class
    gradflow: bool = True  # the gradient-flow section; its ResNet vs plain comparison is the slowest part
    gradflow_batch: int = 2  # a small batch keeps the report fast on two cores
    gradflow_size: int = 112  # input side for the gradient-flow measurement


@dataclass
class ReportResult:
    html: Path
    json: Path
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per section
    html_bytes: int = 0
    total_s: float = 0.0  # wall time of the whole build


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


def _finite(v: float) -> float | None:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def jsonable(obj: Any) -> Any:
    """Plain JSON: tuples become lists, NaN/inf become null (JSON has no such numbers)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float):
        return _finite(obj)
    if isinstance(obj, (np.floating, np.integer)):
        return jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def section(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - t, 3)


def build_report(image: str | os.PathLike, model: nn.Module, meta: ModelMeta, options: ReportOptions | None = None) -> ReportResult:
    """Write ``report.html`` (self-contained) and ``report.json`` for ``image`` into ``options.out_dir``.

    Args:
        image: the photo to follow through the network.
        model: a torchvision-style ResNet (eval mode is set here).
        meta: from :func:`resnet_xray.model.load_model`: labels, preprocessing, provenance.
        options: output folder and the knobs that trade detail for speed.

    Returns:
        Paths of both files and the wall time of each section.
    """
    from .html import render_html

    opts = options or ReportOptions()
    out_dir = writable_dir(opts.out_dir)  # fail before any compute if it cannot be written
    if opts.cam_class is not None:
        check_class_index(opts.cam_class, len(meta.class_names))
    clock = _Clock()
    t0 = time.perf_counter()
    model.eval()
    with clock.section("load"):
        img = load_image(image)
        x = meta.preprocessing(img).unsqueeze(0)
        rgb = meta.preprocessing.denormalize(x[0])
    with clock.section("anatomy"):
        anatomy = analyze(model, meta.arch, AnatomyOptions(input_size=x.shape[-1]))
    drawn = [r.name for r in anatomy.layers if r.type in GRID_TYPES and len(r.output_shape) == 3]
    with clock.section("trace"):
        cap = capture(model, x, drawn)
        trace = cap.trace
    data: dict[str, Any] = {"image": str(image), "model": meta.to_dict(), "options": asdict(opts)}
    pics: dict[str, Any] = {}

    with clock.section("prediction"):
        probs = cap.logits.float().softmax(dim=1)[0]
        k = min(5, probs.numel())
        top = probs.topk(k)
        data["prediction"] = [
            {"index": int(i), "label": meta.class_names[int(i)] if int(i) < len(meta.class_names) else f"class_{int(i)}", "prob": float(p)}
            for p, i in zip(top.values, top.indices)
        ]
        thumb = img.copy()
        thumb.thumbnail((640, 640))
        pics["original"] = array_uri(np.asarray(thumb), "JPEG", 88)
        pics["seen"] = array_uri(rgb, "PNG")
        data["input"] = {"original_size": list(img.size), "tensor_shape": list(x.shape), "transforms": meta.preprocessing.source}

    with clock.section("navigator"):
        stats = {s.name: s.to_dict() for s in trace.layers}
        convs = conv_layers(model)
        layers = []
        for r in anatomy.layers:
            entry: dict[str, Any] = {**r.to_dict(), "stats": stats.get(r.name)}
            if r.type == "bn":
                entry["grid_note"] = "no grid: per channel, a BatchNorm output is an affine rescaling of the conv output above it"
            if r.name in cap.maps:
                g = feature_grid(r.name, cap.maps[r.name], opts.grid_order, 64, opts.grid_tile)
                entry["grid"] = {"channels": g.channels, "order": g.order, "vmin": g.vmin, "vmax": g.vmax, "caption": g.caption()}
                pics.setdefault("grids", {})[r.name] = data_uri(grid_jpeg(g), "image/jpeg")
            if r.type == "conv" and r.name in convs:
                kimg, kcap = kernel_image(convs[r.name], r.name, max_side=128)
                entry["kernel_picture"] = kcap
                pics.setdefault("kernels", {})[r.name] = array_uri(kimg)
            layers.append(entry)
        data["layers"] = layers
        data["blocks"] = [b.to_dict() for b in trace.blocks]
        data["anatomy"] = {k: v for k, v in anatomy.to_dict().items() if k != "layers"}

    with clock.section("kernels"):
        fig, caption = kernel_figure(model, KernelsOptions("conv1"))
        pics["conv1"] = png_uri(fig)
        data["conv1_kernels"] = caption

    with clock.section("stages"):
        stages = stage_outputs(anatomy.layers)
        pics["stages"] = jpeg_uri(stages_figure(rgb, stages, cap.maps, StagesOptions(channels=8)))
        sheets = []
        for st in stages:
            g = feature_grid(st.layer, cap.maps[st.layer], "top", 64)
            pics.setdefault("stage_grids", {})[st.stage] = jpeg_uri(feature_figure(g))
            sheets.append({"stage": st.stage, "layer": st.layer, "shape": list(st.shape), "channels": g.channels, "vmin": g.vmin, "vmax": g.vmax})
        data["stages"] = sheets
    trace.maps.clear()  # the kept maps are not needed past this point: free them before the backward passes
    del cap

    with clock.section("residual"):
        from ..viz.residual import plot_residual_contributions

        pics["residual"] = _plot_to_uri(plot_residual_contributions, trace.blocks)

    with clock.section("cam"):
        res = compute_cams(model, x, meta.class_names, CamOptions(class_index=opts.cam_class, methods=opts.cam_methods))
        pics["cam"] = jpeg_uri(cam_figure(rgb, res))
        data["cam"] = res.to_dict()

    if opts.gradflow:
        with clock.section("gradflow"):
            data["gradflow"], pics["gradflow"] = _gradflow(meta, opts)

    with clock.section("walkthrough"):
        from ..trace import walkthrough

        try:
            data["walkthrough"] = walkthrough(model, x).to_dict()
        except (ValueError, KeyError, AttributeError) as e:  # a model without a torchvision layer1.0 block
            data["walkthrough"] = {"unavailable": str(e)}

    with clock.section("write"):
        data["timings_s"] = clock.seconds
        data["timings_s"]["total_before_write"] = round(time.perf_counter() - t0, 3)
        doc = jsonable(data)
        html = render_html(doc, pics)
        json_path = write_bytes_atomic(json.dumps(doc, indent=1).encode(), out_dir / "report.json")
        html_path = write_bytes_atomic(html.encode("utf-8"), out_dir / "report.html")
    return ReportResult(html_path, json_path, clock.seconds, len(html.encode("utf-8")), round(time.perf_counter() - t0, 3))


def _plot_to_uri(plot, *args) -> str:
    """Run one of the trace package's ``plot_*(..., path)`` functions and embed the PNG it writes."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "plot.png"
        plot(*args, path)
        return data_uri(path.read_bytes(), "image/png")


def _gradflow(meta: ModelMeta, opts: ReportOptions) -> tuple[dict[str, Any], str]:
    from ..trace.gradflow import GradFlowOptions, measure_gradflow
    from ..viz.gradflow import plot_gradflow

    # At initialisation (random weights), as the seed's argument is about; the report's model is not changed.
    gopts = GradFlowOptions(arch=meta.arch, weights="random", batch_size=opts.gradflow_batch, input_size=opts.gradflow_size)
    res = measure_gradflow(gopts)
    return res.to_dict(), _plot_to_uri(plot_gradflow, res)


def check_out_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise XrayError(f"-o {p}: exists and is not a directory")
    return writable_dir(p)
