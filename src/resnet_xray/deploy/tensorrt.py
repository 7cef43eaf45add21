"""Build and run a TensorRT engine from the exported ONNX file (section 12 of the article).

Builder, network, OnnxParser, as in the article, with FP16 or INT8 (entropy calibration
from the same image folder ``quantize`` uses). Device buffers are torch CUDA tensors,
so no pycuda is needed. Written against the TensorRT 10 Python API; it needs
``tensorrt`` importable and a CUDA GPU, and says so in one line when either is missing.
It has not been run on this project's CPU-only machines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_bytes
from ..compare import Tolerance, compare
from ..errors import XrayError
from ..image import bundled_cat, load_batch
from ..interface import class_logits
from ..options import option
from .data import image_batches, list_images
from .onnx import OnnxInfo, _check_dict, check_writable, inspect_onnx

PRECISIONS = ("fp16", "int8")


@dataclass
class TensorRTOptions:
    precision: str = option("fp16", "fp16 | int8")
    calib_dir: str | None = option(None, "images for INT8 calibration (required for int8)")
    max_calib_images: int = option(512, "entropy calibration needs a few hundred images, not thousands")
    workspace_gib: float = option(2.0, "builder scratch memory")
    batch: int = option(1, "the batch the engine is built for (min = opt = max)")


def tensorrt_available() -> tuple[bool, str]:
    """(True, version) when TensorRT and a CUDA GPU are both present, else (False, why not)."""
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError:
        return False, "TensorRT is not installed (pip install tensorrt; it needs an NVIDIA GPU)"
    if not torch.cuda.is_available():
        return False, "TensorRT needs a CUDA GPU and none is available"
    return True, trt.__version__


def require_tensorrt() -> Any:
    ok, why = tensorrt_available()
    if not ok:
        raise XrayError(f"--tensorrt: {why}")
    import tensorrt as trt

    return trt


def _make_calibrator(trt: Any, info: OnnxInfo, opts: TensorRTOptions, cache: Path):
    files = list_images(opts.calib_dir, "--calib")[: opts.max_calib_images]
    shape = (opts.batch, 3, info.image_size, info.image_size)

    class ImageEntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.skipped: list = []
            self.batches = image_batches(files, info.preprocessing, opts.batch, self.skipped, "calibrate trt", True)
            self.device_input = torch.empty(shape, dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return opts.batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            nxt = next(self.batches, None)
            if nxt is None or nxt[1].shape[0] != opts.batch:
                return None
            self.device_input.copy_(torch.from_numpy(nxt[1]))
            return [int(self.device_input.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.exists() else None

        def write_calibration_cache(self, data: bytes) -> None:
            cache.write_bytes(bytes(data))

    return ImageEntropyCalibrator()


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, options: TensorRTOptions | None = None) -> Path:
    """Parse ``onnx_path`` and serialise an engine to ``engine_path`` (atomically).

    Raises:
        XrayError: no TensorRT or no GPU, int8 without a calibration folder, or a parse failure.
    """
    opts = options or TensorRTOptions()
    if opts.precision not in PRECISIONS:
        raise XrayError(f"--tensorrt {opts.precision!r}: choose fp16 or int8")
    trt = require_tensorrt()
    if opts.precision == "int8" and not opts.calib_dir:
        raise XrayError("--tensorrt int8 needs --calib DIR (calibration images)")
    info = inspect_onnx(onnx_path)
    out = check_writable(engine_path)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise XrayError(f"{onnx_path}: TensorRT's OnnxParser failed: {errs[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gib * (1 << 30)))
    size = info.image_size
    profile = builder.create_optimization_profile()
    shape = (opts.batch, 3, size, size)
    profile.set_shape(info.input_name, shape, shape, shape)
    config.add_optimization_profile(profile)
    config.set_flag(trt.BuilderFlag.FP16)  # int8 engines keep fp16 for layers that stay in float
    if opts.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _make_calibrator(trt, info, opts, out.with_name(out.name + ".calib-cache"))
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise XrayError(f"{onnx_path}: TensorRT could not build a {opts.precision} engine (see the log above)")
    return write_bytes(out, bytes(serialized), "--tensorrt")


def check_engine(engine_path: str | os.PathLike, onnx_path: str | os.PathLike, model: torch.nn.Module,
                 images: list[str | os.PathLike] | None = None) -> dict[str, Any]:
    """TensorRT vs eager PyTorch on real images: the one equivalence check, as for ONNX Runtime and INT8.

    The images are the bundled photo plus ``images``, preprocessed with the ONNX sidecar's
    pipeline (the engine was built from that file). FP16 and INT8 engines move logits by
    design, so the check gates on the decision (top-1 agreement), as the INT8 routes do.

    Returns:
        The export check's report (``passed``, ``reason``, ``max_abs_diff``, ``top1_agreement`` ...).
    """
    info = inspect_onnx(onnx_path)
    names, x, skipped = load_batch([bundled_cat(), *(images or [])], info.preprocessing)
    runner = TensorRTRunner(engine_path)
    with torch.inference_mode():
        got = torch.cat([runner(x[i : i + 1]).float().cpu() for i in range(x.shape[0])])  # engines are built for batch 1
        ref = class_logits(model.eval()(x)).float()
    eq = compare(ref, got, tolerance=Tolerance.reduced_precision(), names=("eager", "tensorrt"))
    return _check_dict(eq, len(names), skipped)


class TensorRTRunner:
    """Run a serialised engine on CUDA tensors; ``runner(x)`` returns the logits tensor."""

    def __init__(self, engine_path: str | os.PathLike):
        trt = require_tensorrt()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise XrayError(f"{engine_path}: not a TensorRT engine for this GPU/TensorRT version")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.stream = torch.cuda.Stream()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to("cuda", torch.float32).contiguous()
        self.context.set_input_shape(self.input, tuple(x.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.input, int(x.data_ptr()))
        self.context.set_tensor_address(self.output, int(out.data_ptr()))
        self.stream.wait_stream(torch.cuda.current_stream())  # x and out were made on the default stream
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return out
