"""PyTorch's own INT8 route, for comparison with ONNX Runtime's.

With torch 2.14.1 the PT2E flow lives in ``torchao``; its ``X86InductorQuantizer``
(torchao 0.18.0, the newest release) fails on torchvision's ResNet ("Input partition
has more than one output node"), and its INT8 speed needs ``torch.compile`` anyway.
``torch.ao.quantization``'s FX graph mode with the ``x86`` engine is still present in
2.14.1, runs real INT8 kernels (FBGEMM/oneDNN) in eager mode, and is what this uses.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..image import Preprocessing, Skipped
from ..interface import ClassLogits
from .data import image_batches

ENGINE = "x86"


@dataclass
class TorchInt8:
    model: nn.Module  # the converted FX GraphModule (CPU only)
    calibration_images: int
    skipped: list[Skipped]

    def describe(self) -> dict[str, Any]:
        return {
            "route": f"torch.ao.quantization FX graph mode (prepare_fx/convert_fx), engine {ENGINE!r}",
            "qconfig": f"get_default_qconfig_mapping({ENGINE!r}): per-channel int8 weights, uint8 activations (histogram observer)",
            "calibration_images": self.calibration_images,
            "skipped": [s.__dict__ for s in self.skipped],
        }



@torch.inference_mode(False)
@torch.no_grad()
def quantize_torch_fx(
    model: nn.Module,
    calib_files: list[Path] | None,
    pre: Preprocessing,
    *,
    calib_batches: list[torch.Tensor] | None = None,
    progress: bool = False,
) -> TorchInt8:
    """Post-training static INT8 of an eager model with FX graph mode quantisation.

    Args:
        model: any FX-traceable ResNet-like module (the original, unfused one: FX fuses
            conv+bn+relu itself).
        calib_files: calibration images, streamed through ``pre``.
        pre: the model's preprocessing.
        calib_batches: ready-made NCHW batches instead of files (tests, benchmarks).
        progress: progress bar.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = ENGINE
    m = copy.deepcopy(model).eval()
    wrapped = m if isinstance(_probe(m, pre), torch.Tensor) else ClassLogits(m)
    example = (torch.zeros(1, 3, pre.crop, pre.crop),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FX quantisation's deprecation notices are not the user's concern
        prepared = prepare_fx(wrapped, get_default_qconfig_mapping(ENGINE), example)
        n = 0
        skipped: list[Skipped] = []
        if calib_batches is not None:
            for x in calib_batches:
                prepared(x)
                n += x.shape[0]
        else:
            for names, x in image_batches(list(calib_files or []), pre, 8, skipped, "calibrate torch", progress):
                prepared(torch.from_numpy(x))
                n += len(names)
        converted = convert_fx(prepared)
    return TorchInt8(converted.eval(), n, skipped)


def _probe(model: nn.Module, pre: Preprocessing) -> Any:
    with torch.no_grad():
        return model(torch.zeros(1, 3, pre.crop, pre.crop))
