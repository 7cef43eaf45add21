"""resnet-xray: take a torchvision ResNet apart layer by layer, then make it fast and useful.

The public API, one verb per capability (the same verbs as the CLI)::

    import resnet_xray as rx
    model = rx.load_model("resnet18", weights="random")   # the module and its metadata
    result = rx.classify(model, ["cat.png"], topk=5)
    result.to_dict()   # what `resnet-xray classify ... --json` prints

Names load on first use, so ``import resnet_xray`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "load_model": "resnet_xray.api",
    "LoadedModel": "resnet_xray.model",
    "classify": "resnet_xray.api",
    "anatomy": "resnet_xray.api",
    "trace": "resnet_xray.api",
    "gradflow": "resnet_xray.api",
    "report": "resnet_xray.api",
    "fuse": "resnet_xray.api",
    "export": "resnet_xray.api",
    "quantize": "resnet_xray.api",
    "bench": "resnet_xray.api",
    "evaluate": "resnet_xray.api",
    "bench_data": "resnet_xray.api",
    "finetune": "resnet_xray.api",
    "prune": "resnet_xray.api",
    "preprocess": "resnet_xray.api",
    "show": "resnet_xray.api",
    "make_dataset": "resnet_xray.api",
    "optimize": "resnet_xray.api",
    "classify_batch": "resnet_xray.api",
    "evaluate_batch": "resnet_xray.api",
    "explore": "resnet_xray.api",
    "layers": "resnet_xray.api",
    "WeightsInfo": "resnet_xray.provenance",
    "XrayError": "resnet_xray.errors",
    "OptionError": "resnet_xray.options",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'resnet_xray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
