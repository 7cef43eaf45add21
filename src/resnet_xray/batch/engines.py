"""The model of a batch job in its engine's throughput mode, built the same way in any process.

* OpenVINO ``.xml``: compiled with the ``THROUGHPUT`` hint (several streams) and fed through an
  ``AsyncInferQueue`` with the engine's optimal number of requests, one image per request, as
  OpenVINO's own ``benchmark_app`` runs a batch-1 model.
* ONNX Runtime ``.onnx``: whole batches per call; a file exported with a batch of 1 is opened
  with its batch dimension made free (:func:`~resnet_xray.deploy.runtime.free_batch_session`).
* PyTorch: batched calls on the BatchNorm-fused copy of the model.

A :class:`ModelSource` says how to build the engine; it pickles, so a Ray actor builds its own.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..classification import check_scores
from ..deploy.fuse import fuse_model
from ..deploy.onnx import inspect_onnx, ort_session, run_ort
from ..deploy.openvino import asked_precision, inspect_ir
from ..deploy.runtime import ENGINES, OpenVinoThroughput, free_batch_session, in_batches_of, load_deployed
from ..deploy.timing import torch_threads
from ..errors import XrayError
from ..interface import class_logits
from ..model import ModelMeta, as_model

DIGEST_CHARS = 12  # of the weights' blake2b: enough to tell two models apart, short enough to read


@dataclass
class ModelSource:
    """What the engine is built from: a deployed file (``path``) or a PyTorch module."""

    engine: str  # openvino | onnxruntime | torch
    path: str | None = None
    module: Any = None  # nn.Module for engine "torch"
    threads: int | None = None  # intra-op threads (None: the engine's own choice)


def model_source(model: Any, threads: int | None = None) -> tuple[ModelSource, ModelMeta, str]:
    """``(source, meta, identity)`` for a deployed file path, a LoadedModel, a ``(module, meta)`` pair or a weights path.

    A deployed file is opened once with :func:`~resnet_xray.deploy.runtime.load_deployed`, which
    validates it and reads its description; the engine then opens it again in throughput mode.
    """
    if isinstance(model, (str, os.PathLike)) and Path(model).suffix.lower() in ENGINES:
        path = Path(model)
        deployed, meta = load_deployed(path, threads)
        ident = f"{path.name} ({deployed.engine} {deployed.precision}) #{_file_digest(path)}"
        return ModelSource(deployed.engine, str(path), threads=threads), meta, ident
    m = as_model(model)
    return ModelSource("torch", module=m.module, threads=threads), m.meta, f"{m.meta.arch} {m.meta.weights} #{_module_digest(m.module)}"


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in (path, path.with_suffix(".bin")) if path.suffix.lower() == ".xml" else (path,):
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:DIGEST_CHARS]


def _module_digest(module: Any) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:DIGEST_CHARS]


def open_engine(source: ModelSource, pixels: Any = None) -> Any:
    """The engine for ``source``: an object with ``name`` and ``infer(x) -> logits`` (float32 NumPy in and out).

    ``pixels``: the :class:`~resnet_xray.image.Preprocessing` whose uint8 NHWC crops an OpenVINO engine then
    takes, converting and normalising them in its own graph (see :func:`takes_pixels`).
    """
    if source.engine == "openvino":
        return OpenVinoEngine(Path(source.path), source.threads, pixels)
    if source.engine == "onnxruntime":
        return OrtEngine(Path(source.path), source.threads)
    return TorchEngine(source.module, source.threads)


def checked(engine: Any, x: np.ndarray, paths: list[str], identity: str) -> np.ndarray:
    """``engine.infer(x)``, refused (OutputError, exit 1) when the scores hold NaN or Inf: argmax would read a label from them."""
    logits = np.asarray(engine.infer(x), dtype=np.float32)
    if logits.ndim != 2 or logits.shape[0] != len(paths):
        raise XrayError(f"{identity}: gives an output of shape {list(logits.shape)} for {len(paths)} image(s)")
    check_scores(logits, paths, identity)
    return logits


def takes_pixels(source: ModelSource) -> bool:
    """Whether the job feeds this engine uint8 crops: OpenVINO normalises them in its graph, for a quarter of the bytes
    between the decoders and the engine, and no float conversion in Python."""
    return source.engine == "openvino"


class OpenVinoEngine:
    """THROUGHPUT hint + AsyncInferQueue: every stream busy, one image (or the file's fixed batch) per request."""

    def __init__(self, path: Path, threads: int | None = None, pixels: Any = None):
        model, info = inspect_ir(path, "--model")
        if pixels is not None:
            model = _pixel_input(model, pixels)
        self.run = OpenVinoThroughput(model, threads, precision=asked_precision(info.meta))
        self.name = f"openvino throughput ({self.run.requests} async requests{', uint8 input' if pixels is not None else ''})"

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.run(x)


def _pixel_input(model: Any, pre: Any) -> Any:
    """``model`` taking uint8 NHWC crops: OpenVINO's PrePostProcessor converts, normalises and transposes them."""
    from openvino import Layout, Type
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(Type.u8).set_layout(Layout("NHWC"))
    ppp.input().model().set_layout(Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(Type.f32).mean([255 * m for m in pre.mean]).scale([255 * s for s in pre.std])
    return ppp.build()


class OrtEngine:
    """Whole batches per ONNX Runtime call."""

    def __init__(self, path: Path, threads: int | None = None):
        info = inspect_onnx(path, "--model")
        self.fixed = info.fixed_batch
        self.session = free_batch_session(path, threads) if self.fixed == 1 else None
        if self.session is not None:
            self.fixed = None
        else:
            self.session = ort_session(path, threads)
        self.name = "onnxruntime batched" if self.fixed is None else f"onnxruntime (fixed batch {self.fixed})"

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.fixed is not None and self.fixed > 1:
            return in_batches_of(lambda b: run_ort(self.session, b, self.fixed), self.fixed)(x)
        return run_ort(self.session, x, self.fixed)


class TorchEngine:
    """Batched calls on the BatchNorm-fused model."""

    def __init__(self, module: Any, threads: int | None = None):
        self.threads = threads  # set around each call and restored, so an API caller's own setting survives the job
        try:
            self.module = fuse_model(module)
            self.name = "pytorch batched (fused)"
        except Exception:  # noqa: BLE001 - a model the folding does not understand still runs, unfused
            self.module = module.eval()
            self.name = "pytorch batched"

    def infer(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch_threads(self.threads), torch.inference_mode():
            return class_logits(self.module(torch.from_numpy(x))).float().numpy()
