"""Deployed models are models: load an ``.onnx`` or OpenVINO ``.xml`` and use it like a PyTorch one.

:func:`load_deployed` returns ``(model, meta)`` in the shape :func:`resnet_xray.model.load_model`
returns, so ``classify`` runs a deployed artefact with no code of its own. The
description (class names, preprocessing, arch) comes from inside the file, or from a
sidecar validated on load. :func:`evaluate_models` is the accuracy/agreement report over
labelled folders; :func:`runner_at_size` runs a file at another input size, for timing only.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path
from ..classification import OutputError, check_scores
from ..compare import Equivalence, Tolerance, as_logits, compare
from ..errors import XrayError
from ..image import Preprocessing, Skipped
from ..model import ModelMeta
from ..options import at_least, option, thread_count
from ..provenance import WeightsInfo, described_provenance
from .artefact import check_preprocessing
from .data import folder_labels, image_batches, list_images
from .onnx import CAM_NAME, inspect_onnx, ort_runner, ort_session, run_ort
from .openvino import asked_precision, check_granted, compile_cpu, inspect_ir, open_ir, require_openvino

ENGINES = {".onnx": "onnxruntime", ".xml": "openvino"}


class DeployedModel(nn.Module):
    """A deployed artefact behind ``nn.Module``'s call: NCHW float tensor in, logits tensor out."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], engine: str, path: Path, precision: str,
                 fixed_batch: int | None = None):
        super().__init__()
        self.run, self.engine, self.path, self.precision = run, engine, path, precision
        self.fixed_batch = fixed_batch  # images per engine call when the file fixes it; other batches are padded to it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out = np.asarray(self.run(x.detach().float().contiguous().numpy()), dtype=np.float32)
        except XrayError:
            raise
        except Exception as e:  # noqa: BLE001 - the engine's own words, in one line: the file does not run
            raise XrayError(f"{self.path}: {self.engine} cannot run it ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
        if out.ndim != 2 or out.shape[0] != x.shape[0]:
            raise OutputError(f"{self.path}: gives an output of shape {list(out.shape)} for {x.shape[0]} image(s); "
                              "a classifier gives [images, classes]")
        return torch.from_numpy(out)

    def extra_repr(self) -> str:
        return f"{self.path}, {self.engine}, {self.precision}"


def engine_of(path: str | os.PathLike, flag: str = "--model") -> str:
    p = Path(path)
    eng = ENGINES.get(p.suffix.lower())
    if eng is None:
        raise XrayError(f"{flag} {p}: expected an .onnx (ONNX Runtime) or .xml (OpenVINO IR) file")
    return eng


def in_batches_of(run: Callable[[np.ndarray], np.ndarray], batch: int) -> Callable[[np.ndarray], np.ndarray]:
    """``run`` over a model with a fixed batch: any number of images in chunks of ``batch``, the last padded with zeros."""

    def chunked(x: np.ndarray) -> np.ndarray:
        outs = []
        for i in range(0, len(x), batch):
            part = x[i : i + batch]
            pad = np.zeros((batch - len(part), *x.shape[1:]), x.dtype)
            outs.append(np.asarray(run(np.concatenate([part, pad]) if len(pad) else part))[: len(part)])
        return np.concatenate(outs)

    return chunked


def load_deployed(path: str | os.PathLike, threads: int | None = None, flag: str = "--model"):
    """``(DeployedModel, ModelMeta)`` for an ``.onnx`` or ``.xml`` file.

    One image of zeros is run through it on loading, so a model that gives no class scores is
    refused before any work (and before ``bench`` times it).

    Raises:
        XrayError: not such a file, or its description (embedded or sidecar) is malformed or
            does not fit the model (crop size, class count).
        resnet_xray.classification.OutputError: it runs, but gives no class scores.
    """
    thread_count("threads", threads)  # ONNX Runtime takes 0 as "default" and crashes on < 0; libgomp dies on 100000
    p = Path(path)
    engine = engine_of(p, flag)
    run, desc, size, n_out, fixed, pre, ran = _open(p, engine, flag, threads)
    precision = precision_label(bool(desc.get("quantization")), ran)
    model = DeployedModel(run, engine, p, precision, fixed).eval()
    n = _class_count(model, size, n_out or desc.get("num_classes") or len(desc.get("class_names") or []), f"{flag} {p}")
    return model, _deployed_meta(p, engine, precision, desc, n, pre)


def precision_label(quantized: bool, ran: str) -> str:
    """What a deployed file computes in: ``fp32``, ``int8``, ``bf16``, or ``int8+bf16`` (its float layers in bf16)."""
    if ran == "bf16":
        return "int8+bf16" if quantized else "bf16"
    return "int8" if quantized else "fp32"


def _open(p: Path, engine: str, flag: str, threads: int | None
          ) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any], int, int | None, int | None, Preprocessing, str]:
    """Read the file's description and open it.

    Returns (runner, description, side, declared classes, fixed batch, preprocessing, the float
    precision the engine granted: ``f32`` or ``bf16``).
    """
    if engine == "onnxruntime":
        info = inspect_onnx(p, flag)
        desc, size, n_out, declared = info.sidecar, info.image_size, None, info.input_shape[0]
        pre = info.preprocessing
    else:
        _, ir = inspect_ir(p, flag)
        desc, size, n_out, declared = ir.meta, ir.image_size, ir.num_classes, ir.input_shape[0]
        pre = (check_preprocessing(desc["preprocessing"], f"{flag} {p}", size) if desc.get("preprocessing")
               else Preprocessing.seed().scaled_to(size, f"ImageNet pipeline scaled to {size} px (no description found)"))
    if isinstance(declared, int) and declared < 1:
        raise XrayError(f"{flag} {p}: declares a batch of {declared} images; export it with a batch of 1 or --dynamic-batch")
    fixed = declared if isinstance(declared, int) else None
    run, ran = (ort_runner(p, info, threads), "f32") if engine == "onnxruntime" else open_ir(p, threads, batch=fixed)
    if fixed and fixed > 1:  # the engines refuse any other batch: pad to it
        run = in_batches_of(run, fixed)
    return run, desc, size, n_out, fixed, pre, ran


def cam_runner(path: str | os.PathLike, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray] | None:
    """The file's ``cam`` output (``export --cam-output``) as a NumPy-in, N x classes x h x w-out function; None without one."""
    p = Path(path)
    if engine_of(p) == "openvino":
        model, info = inspect_ir(p)
        if not any(CAM_NAME in o.get_names() for o in model.outputs):
            return None
        fixed = info.input_shape[0] if isinstance(info.input_shape[0], int) else None
        request = compile_cpu(model, threads, fixed, precision=asked_precision(info.meta)).create_infer_request()

        def run(x: np.ndarray) -> np.ndarray:
            request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
            return request.get_tensor(CAM_NAME).data.copy()
    else:
        fixed = inspect_onnx(p).fixed_batch
        sess = ort_session(p, threads, spin=False)
        if CAM_NAME not in {o.name for o in sess.get_outputs()}:
            return None

        def run(x: np.ndarray) -> np.ndarray:
            return run_ort(sess, x, fixed, CAM_NAME)
    return in_batches_of(run, fixed) if fixed else run  # the engines refuse any other batch: chunks of it


def _class_count(model: DeployedModel, size: int, described: int, where: str) -> int:
    """Run one image of zeros: the scores per image, which must be some and as many as the description names."""
    with torch.inference_mode():
        scores = int(model(torch.zeros(1, 3, size, size)).shape[1])
    if scores == 0:
        raise OutputError(f"{where}: gives no class scores (an output of 0 values per image)")
    n = described or scores
    if n != scores:
        raise XrayError(f"{where}: gives {scores} scores per image, but its description names {n} classes")
    return n


def _deployed_meta(p: Path, engine: str, precision: str, desc: dict[str, Any], n: int, pre: Preprocessing) -> ModelMeta:
    """The :class:`~resnet_xray.model.ModelMeta` a deployed file's description gives, as a checkpoint's would."""
    names = desc.get("class_names") or [f"class_{i}" for i in range(n)]
    pretrained, provenance = described_provenance(desc)
    return ModelMeta(
        arch=desc.get("arch") or "unknown",
        weights=f"{p} ({engine} {precision}; from {desc.get('weights', 'unknown weights')})",
        class_names=list(names),
        preprocessing=pre,
        pretrained=pretrained if provenance is None else pretrained and provenance.trained is not False,
        provenance=provenance,
    )


# --- accuracy and agreement over labelled folders ---


@dataclass
class ModelEval:
    path: str
    engine: str
    precision: str
    accuracy: float | None  # top-1 on the labelled images (None: no labels)
    check: Equivalence | None  # against the first model; None for the first itself

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "engine": self.engine, "precision": self.precision, "accuracy": self.accuracy,
                "check": self.check.to_dict() if self.check else None}


@dataclass
class EvalResult:
    images: int
    labels: str  # how labels were read, or why there are none
    models: list[ModelEval]
    skipped: list[dict[str, str]] = field(default_factory=list)
    weights: WeightsInfo | None = None  # provenance of the first model

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "labels": self.labels, "models": [m.to_dict() for m in self.models], "skipped": self.skipped,
                "weights": self.weights.to_dict() if self.weights else None}


class Labelled(NamedTuple):
    xs: list[torch.Tensor]  # preprocessed NCHW batches
    ys: np.ndarray | None  # labels from the class folders (None: the folder has none)
    how: str  # how the labels were found, or why not
    skipped: list  # files that could not be read
    files: list[Path]  # the images in xs, in order


def labelled_batches(data: str | os.PathLike, pre: Preprocessing, class_names: list[str], batch: int = 16,
                     limit: int | None = None, limit_flag: str = "--limit") -> Labelled:
    """Preprocessed batches of a folder (its ``val/`` split when there is one) and labels from its class folders.

    ``limit_flag`` names the flag that set ``limit``, for when too few images leave one class.
    """
    root = Path(data)
    if (root / "val").is_dir():
        root = root / "val"
    files = every = list_images(root, "--data")
    if limit:
        # every k-th file keeps each class represented when only some are used
        step = max(1, len(files) // limit)
        files = files[::step][:limit]
    labels, how = folder_labels(files, root, class_names, len(class_names))
    if labels is None and len(files) < len(every) and folder_labels(every, root, class_names, len(class_names))[0]:
        how = f"{how} among the {len(files)} image(s) that {limit_flag} {limit} keeps"  # the folder has more
    index = dict(zip(files, labels)) if labels else None
    skipped: list[Skipped] = []
    xs, ys, read = [], [], []
    for names, x in image_batches(files, pre, batch, skipped, "evaluate", False):
        xs.append(torch.from_numpy(x))
        read.extend(names)
        if index is not None:
            ys.extend(index[n] for n in names)
    if not xs:
        raise XrayError(f"--data {root}: none of the {len(files)} images could be read")
    return Labelled(xs, (np.array(ys) if index is not None else None), how, skipped, read)


def accuracy_of(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float((logits.argmax(1) == labels).mean())


@dataclass
class EvaluateOptions:
    limit: int | None = option(None, "use at most this many images, spread over the classes (None: all)")
    threads: int | None = option(None, "intra-op threads for every engine (None: their own)")

    def __post_init__(self) -> None:
        at_least("limit", self.limit, 1, allow_none=True)
        thread_count("threads", self.threads)


def evaluate_models(paths: list[str | os.PathLike], data: str | os.PathLike, *, tolerance: Tolerance | None = None,
                    limit: int | None = None, threads: int | None = None) -> EvalResult:
    """Accuracy of each deployed model on ``data`` and its agreement with the first one."""
    EvaluateOptions(limit=limit, threads=threads)  # refuses bad values before any model is loaded
    if not paths:
        raise XrayError("--model: give at least one .onnx or .xml file")
    loaded = [load_deployed(p, threads) for p in paths]
    first_meta = loaded[0][1]
    for (m, meta), p in zip(loaded[1:], paths[1:]):
        if meta.preprocessing.crop != first_meta.preprocessing.crop or len(meta.class_names) != len(first_meta.class_names):
            raise XrayError(f"--model {p}: takes other inputs or classes than {paths[0]}; compare models of one network")
    xs, ys, how, skipped, files = labelled_batches(data, first_meta.preprocessing, first_meta.class_names, limit=limit)
    with torch.inference_mode():
        logits = [np.concatenate([as_logits(m(x)) for x in xs]) for m, _ in loaded]
    for z, p in zip(logits, paths):  # argmax over NaN would score as a class, and accuracy print as valid
        check_scores(z, [str(f) for f in files], str(p))
    tol = tolerance or Tolerance.reduced_precision()
    rows = []
    for i, ((m, _), z) in enumerate(zip(loaded, logits)):
        eq = None if i == 0 else compare(logits[0], z, tolerance=tol, names=(str(paths[0]), str(paths[i])))
        rows.append(ModelEval(str(paths[i]), m.engine, m.precision, accuracy_of(z, ys), eq))
    return EvalResult(int(logits[0].shape[0]), how if ys is not None else f"none: {how}", rows,
                      [{"image": s.path, "reason": s.reason} for s in skipped], WeightsInfo.of(first_meta))


# --- timing ---


def runner_at_size(path: str | os.PathLike, size: int, threads: int | None, work: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A batch-1 runner over the file with its input reshaped to ``size`` x ``size``, for timing only.

    A ResNet's convolutions and global pooling take any spatial size, so the same weights and
    quantisation parameters run at another resolution; the ONNX copy with the new input shape
    goes to ``work``. Nothing here checks outputs: the scored candidate is the file itself.
    """
    p = Path(path)
    if engine_of(p) == "openvino":
        model, info = inspect_ir(p)
        model.reshape({model.inputs[0].get_any_name(): [1, 3, size, size]})
        asked = asked_precision(info.meta)
        compiled = compile_cpu(model, threads, precision=asked)
        check_granted(compiled, asked, str(p))
        request = compiled.create_infer_request()
        return lambda x: np.array(request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[0])
    import onnx

    proto = onnx.load(str(p))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, (1, 3, size, size)):
        d.Clear()
        d.dim_value = v
    del proto.graph.value_info[:]  # inferred shapes of the old size would contradict the new input
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"{p.stem}.{size}px.onnx"
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    sess = ort_session(out, threads, spin=False)  # as ort_runner, so both sizes are timed alike
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]



# --- throughput mode: every core busy on many images, rather than one image as fast as possible ---


class OpenVinoThroughput:
    """An OpenVINO model compiled with the ``THROUGHPUT`` hint and fed through an ``AsyncInferQueue``.

    The hint makes several streams; the queue keeps the engine's optimal number of requests in
    flight, ``batch`` images each (the model's fixed batch, or 1), as OpenVINO's ``benchmark_app``
    runs a model. ``model``: an ``openvino.Model`` (read from ``.xml`` or ``.onnx``); ``precision``:
    its float layers' arithmetic (``f32``, or ``bf16`` where the CPU has it).
    """

    def __init__(self, model: Any, threads: int | None = None, batch: int | None = None, precision: str = "f32"):
        ov = require_openvino()
        shape = model.inputs[0].get_partial_shape()
        fixed = shape[0].get_length() if shape[0].is_static else None
        self.per = batch or fixed or 1
        if self.per != fixed:
            model.reshape({model.inputs[0].get_any_name(): [self.per, *[d.get_length() for d in list(shape)[1:]]]})
        compiled = compile_cpu(model, threads, precision=precision, hint="THROUGHPUT")
        self.requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.classes = int(compiled.outputs[0].get_partial_shape()[-1].get_length())
        self.queue = ov.AsyncInferQueue(compiled, self.requests)
        self.queue.set_callback(self._done)

    @staticmethod
    def _done(request: Any, slot: tuple[np.ndarray, int, int]) -> None:
        out, i, n = slot
        out[i : i + n] = request.get_output_tensor(0).data[:n]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits for any number of images: ``batch`` per request, the last one padded with zeros."""
        out = np.empty((len(x), self.classes), np.float32)
        x = np.ascontiguousarray(x, dtype=np.uint8 if x.dtype == np.uint8 else np.float32)  # uint8: a pixel-input model
        for i in range(0, len(x), self.per):
            part = x[i : i + self.per]
            n = len(part)
            if n < self.per:
                part = np.concatenate([part, np.zeros((self.per - n, *x.shape[1:]), x.dtype)])
            self.queue.start_async({0: part}, (out, i, n))
        self.queue.wait_all()
        return out


def free_batch_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An ONNX Runtime session over a file exported with a batch of 1, its batch dimension made free.

    The convolutions and pooling of a ResNet take any batch, so whole batches run in one call.
    None when the graph pins its batch somewhere inside (it then runs image by image).
    """
    import onnx
    import onnxruntime as ort

    p = Path(path)
    proto = onnx.load(str(p))
    for v in (*proto.graph.input, *proto.graph.output):
        dims = v.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = "batch"
    del proto.graph.value_info[:]  # inferred shapes of batch 1 would contradict a batch of 2
    with tempfile.TemporaryDirectory(prefix="resnet-xray-free-batch-") as tmp:
        free = Path(tmp) / p.name
        onnx.save(proto, str(free))
        try:
            session = ort_session(free, threads)
            side = int(session.get_inputs()[0].shape[2])
            quiet = ort.RunOptions()
            quiet.log_severity_level = 4  # a graph pinned to batch 1 inside fails here by design: not an error to print
            out = session.run(None, {session.get_inputs()[0].name: np.zeros((2, 3, side, side), np.float32)}, quiet)[0]
        except Exception:  # noqa: BLE001 - ORT refuses the graph at another batch: run it as it is
            return None
    return session if out.shape[0] == 2 else None


THROUGHPUT_BATCH = 16  # images per call when a synchronous engine (ONNX Runtime, PyTorch) is timed for throughput
THROUGHPUT_METHOD = (f"throughput mode: OpenVINO with the THROUGHPUT hint and an async request queue, ONNX Runtime "
                     f"and PyTorch at {THROUGHPUT_BATCH} images per call")


def images_per_second(run: Callable[[np.ndarray], Any], x: np.ndarray, seconds: float = 1.0) -> float:
    """Images/s of ``run`` over ``x`` (any number of images per call), after one untimed call, for at least ``seconds``."""
    run(x)
    images, t0 = 0, time.perf_counter()
    while images == 0 or time.perf_counter() - t0 < seconds:
        run(x)
        images += len(x)
    return images / (time.perf_counter() - t0)


def deployed_throughput(path: str | os.PathLike, threads: int | None = None, seconds: float = 1.0) -> float:
    """Images/s of a deployed file in its engine's throughput mode, as ``classify --out`` runs it.

    OpenVINO: the THROUGHPUT hint with an async queue; ONNX Runtime: :data:`THROUGHPUT_BATCH` images
    per call (its batch made free when it was exported with a batch of 1).
    """
    p = Path(path)
    if engine_of(p) == "openvino":
        model, info = inspect_ir(p)
        run: Callable[[np.ndarray], Any] = OpenVinoThroughput(model, threads, precision=asked_precision(info.meta))
        n, size = 2 * run.requests * run.per, info.image_size
    else:
        info = inspect_onnx(p)
        fixed = info.fixed_batch
        sess = free_batch_session(p, threads) if fixed == 1 else None
        fixed = None if sess is not None else fixed
        sess = sess or ort_session(p, threads)
        run, n, size = (lambda x: run_ort(sess, x, fixed)), (fixed or THROUGHPUT_BATCH), info.image_size
    x = np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)
    return images_per_second(run, x, seconds)
