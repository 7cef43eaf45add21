"""The ``show`` pictures as library calls: image in, PNG out, one options dataclass each."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..image import load_image
from ..model import LoadedModel, ModelMeta
from ..provenance import WeightsInfo
from .cam import METHOD_TITLES, CamOptions, CamResult, cam_figure, compute_cams, format_prob
from .canvas import save_figure, stamp
from .features import FeatureGrid, FeaturesOptions, feature_figure, feature_grid
from .kernels import KernelsOptions, check_count, kernel_figure
from .maps import capture, check_feature_layer, layer_rows
from .stages import StagesOptions, stage_outputs, stages_figure


def image_tensor(image: str | os.PathLike, meta: ModelMeta) -> torch.Tensor:
    """The image as the network sees it, a batch of one."""
    return meta.preprocessing(load_image(image)).unsqueeze(0)


def show_features(image: str | os.PathLike, model: nn.Module, meta: ModelMeta, output: str | os.PathLike,
                  options: FeaturesOptions | None = None) -> tuple[Path, FeatureGrid]:
    """Write the 8 x 8 feature grid of one layer for ``image`` to ``output`` (PNG)."""
    opts = options or FeaturesOptions()
    x = image_tensor(image, meta)
    check_feature_layer(opts.layer, layer_rows(model, x.shape[-1]))
    cap = capture(model, x, [opts.layer])
    grid = feature_grid(opts.layer, cap.maps[opts.layer], opts.channels, opts.count)
    return save_figure(stamp(feature_figure(grid), meta), output), grid


def show_kernels(model: nn.Module, output: str | os.PathLike, options: KernelsOptions | None = None,
                 weights: ModelMeta | str | None = None) -> tuple[Path, str]:
    """Write a conv layer's kernels to ``output``; returns the path and the caption.

    ``weights`` (the ModelMeta, or a label) is named under the picture, with a warning in its title when untrained.
    """
    opts = options or KernelsOptions()
    check_count(opts.count)
    fig, caption = kernel_figure(model, opts)
    return save_figure(stamp(fig, weights), output), caption


def show_cam(image: str | os.PathLike, model: nn.Module, meta: ModelMeta, output: str | os.PathLike,
             options: CamOptions | None = None) -> tuple[Path, CamResult]:
    """Write CAM overlays (Grad-CAM first) for the predicted or given class to ``output``."""
    x = image_tensor(image, meta)
    result = compute_cams(model, x, meta.class_names, options)
    rgb = meta.preprocessing.denormalize(x[0])
    return save_figure(stamp(cam_figure(rgb, result), meta), output), result


def show_stages(image: str | os.PathLike, model: nn.Module, meta: ModelMeta, output: str | os.PathLike,
                options: StagesOptions | None = None) -> Path:
    """Write one row per stage (stem, layer1 ... layer4) of the most active channels to ``output``."""
    x = image_tensor(image, meta)
    stages = stage_outputs(layer_rows(model, x.shape[-1]))
    cap = capture(model, x, [s.layer for s in stages])
    rgb = meta.preprocessing.denormalize(x[0])
    return save_figure(stamp(stages_figure(rgb, stages, cap.maps, options), meta), output)


PICTURES = ("features", "kernels", "cam", "stages")
OPTIONS = {"features": FeaturesOptions, "kernels": KernelsOptions, "cam": CamOptions, "stages": StagesOptions}


@dataclass
class ShowResult:
    picture: str  # features | kernels | cam | stages
    path: Path  # the PNG written
    caption: str  # what the picture shows, as the CLI prints it
    details: dict[str, Any]  # the picture's numbers (channels drawn, CAM class and probability ...)
    weights: WeightsInfo

    def to_dict(self) -> dict[str, Any]:
        return {"picture": self.picture, "path": str(self.path), "caption": self.caption, **self.details,
                "weights": self.weights.to_dict()}


def draw(m: LoadedModel, picture: str, output: str | os.PathLike, image: str | os.PathLike | None, opts: Any) -> ShowResult:
    """Draw ``picture`` of ``m`` (on ``image``, except kernels) with its options ``opts``, as a PNG at ``output``."""
    if picture == "features":
        path, grid = show_features(image, m.module, m.meta, output, opts)
        return ShowResult(picture, Path(path), grid.caption(), {"layer": grid.layer, "channels": list(grid.channels)}, m.weights)
    if picture == "kernels":
        path, caption = show_kernels(m.module, output, opts, weights=m.meta)
        return ShowResult(picture, Path(path), caption, {}, m.weights)
    if picture == "cam":
        path, r = show_cam(image, m.module, m.meta, output, opts)
        caption = (f"class #{r.class_index} {r.label} (p = {format_prob(r.prob)}, {'predicted' if r.predicted else 'requested'}); "
                   f"{', '.join(METHOD_TITLES[k] for k in r.maps)} on {r.layer}")
        return ShowResult(picture, Path(path), caption, {"class_index": r.class_index, "label": r.label, "prob": r.prob,
                                                         "predicted": r.predicted, "methods": list(r.maps), "layer": r.layer},
                          m.weights)
    path = show_stages(image, m.module, m.meta, output, opts)
    return ShowResult(picture, Path(path), "one sheet per stage", {}, m.weights)
