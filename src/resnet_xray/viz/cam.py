"""Class activation maps on any stage (``layer4`` by default) with pytorch-grad-cam: Grad-CAM, Grad-CAM++ and others.

The library's hooks live on one object; :func:`cam_session` releases them on exit
(its own ``__exit__`` also swallows IndexError, which would hide our bugs).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from ..errors import XrayError
from ..interface import ClassLogits
from ..options import OptionError, one_of, option
from ..units import pct
from .canvas import new_figure
from .names import resolve_layer


def _methods() -> dict[str, type]:
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM

    return {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM, "eigencam": EigenCAM}


CAM_METHODS = ("gradcam", "gradcam++", "layercam", "eigencam")
CAM_STAGES = ("layer1", "layer2", "layer3", "layer4")  # the stages a CAM can be taken from: finer and less class-specific early
METHOD_TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "layercam": "LayerCAM", "eigencam": "Eigen-CAM (class-agnostic)"}


@dataclass
class CamOptions:
    class_index: int | None = option(None, "class index (default: the prediction)")
    layer: str = option("layer4", "stage whose output the maps are computed on: layer4 is the coarsest and most class-specific")
    methods: tuple[str, ...] = option(("gradcam", "gradcam++"), "extra CAM method beside Grad-CAM; repeatable (default: gradcam++)")

    def __post_init__(self) -> None:
        if self.class_index is not None and self.class_index < 0:
            raise OptionError("class_index", self.class_index, "out of range; class indices start at 0")
        for m in self.methods:
            one_of("methods", m, CAM_METHODS)
        self.methods = tuple(dict.fromkeys(("gradcam", *self.methods)))


@dataclass
class CamResult:
    layer: str
    class_index: int
    label: str
    prob: float  # softmax probability of that class for this image
    predicted: bool  # class_index is the top-1 prediction
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # method -> H x W in [0, 1], input resolution

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "class_index": self.class_index,
            "label": self.label,
            "prob": self.prob,
            "predicted": self.predicted,
            "methods": list(self.maps),
            "peak_yx": {m: [int(v) for v in np.unravel_index(int(np.argmax(a)), a.shape)] for m, a in self.maps.items()},
        }


@contextmanager
def cam_session(method: str, model: nn.Module, layer: nn.Module) -> Iterator[object]:
    cam = _methods()[method](model=model, target_layers=[layer])
    try:
        yield cam
    finally:
        cam.activations_and_grads.release()


def format_prob(p: float) -> str:
    """A probability as a percentage, or in scientific notation when a percentage would round to zero."""
    return pct(p, 2) if p >= 1e-4 else f"{p:.2e}"


def target_module_name(modules: dict[str, nn.Module], name: str) -> str:
    """``name`` itself, or the one module ending in ``.name`` (a multi-task model keeps layer4 at backbone.layer4)."""
    if name in modules:
        return name
    ends = [n for n in modules if n.endswith("." + name)]
    if len(ends) == 1:
        return ends[0]
    return resolve_layer(name, [n for n in modules if n], what="module")


def check_class_index(index: int, num_classes: int) -> int:
    if not 0 <= index < num_classes:
        raise XrayError(f"--class {index}: out of range; this model has classes 0..{num_classes - 1}")
    return index


def compute_cams(model: nn.Module, x: torch.Tensor, class_names: list[str], options: CamOptions | None = None) -> CamResult:
    """CAM heat maps for one image ``x`` (1 x 3 x H x W), for the predicted or the given class.

    Args:
        model: the classifier; put in eval mode.
        x: the preprocessed image batch of one.
        class_names: labels for the outputs.
        options: class, layer and methods.

    Returns:
        A :class:`CamResult` whose maps are scaled to [0, 1] at the input's resolution.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    opts = options or CamOptions()
    for m in opts.methods:
        if m not in CAM_METHODS:
            raise XrayError(f"--method {m!r}: choose from {', '.join(CAM_METHODS)}")
    modules = dict(model.named_modules())
    layer = target_module_name(modules, opts.layer)
    model.eval()
    classifier = ClassLogits(model).eval()  # a multi-task model returns a dict, which CAM cannot use
    with torch.no_grad():
        probs = classifier(x).float().softmax(dim=1)[0]
    top = int(probs.argmax())
    idx = top if opts.class_index is None else check_class_index(opts.class_index, probs.numel())
    maps: dict[str, np.ndarray] = {}
    with torch.enable_grad():
        for m in opts.methods:
            with cam_session(m, classifier, modules[layer]) as cam:
                maps[m] = np.asarray(cam(input_tensor=x, targets=[ClassifierOutputTarget(idx)])[0], dtype=np.float32)
    label = class_names[idx] if idx < len(class_names) else f"class_{idx}"
    return CamResult(layer, idx, label, float(probs[idx]), idx == top, maps)


def overlay(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """Blend a [0, 1] heat map over an HWC uint8 picture."""
    from matplotlib import colormaps

    colour = colormaps[cmap](np.clip(heat, 0, 1))[..., :3]
    return ((1 - alpha) * rgb.astype(np.float32) / 255 + alpha * colour).clip(0, 1)


def cam_figure(rgb: np.ndarray, result: CamResult) -> Figure:
    """The picture the network sees, then one overlay per CAM method, titled with class and probability."""
    n = 1 + len(result.maps)
    fig = new_figure(3.0 * n, 3.6)
    axes = fig.subplots(1, n, squeeze=False)[0]
    axes[0].imshow(rgb)
    axes[0].set_title("what the network sees", fontsize=9)
    for ax, (m, heat) in zip(axes[1:], result.maps.items()):
        ax.imshow(overlay(rgb, heat))
        ax.set_title(f"{METHOD_TITLES[m]} on {result.layer}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    which = "predicted" if result.predicted else "requested"
    fig.suptitle(f"class #{result.class_index} {result.label!r} ({which}; p = {format_prob(result.prob)})  |  red = more evidence for the class", fontsize=9)
    return fig
