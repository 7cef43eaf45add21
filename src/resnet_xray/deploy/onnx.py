"""Export a ResNet-like model to ONNX and check it against eager PyTorch in ONNX Runtime.

The exporter is ``torch.onnx.export``: by default its dynamo-based route (the one
torch 2.14 maintains, via ``torch.export`` and onnxscript); ``exporter="torchscript"``
selects the older ``dynamo=False`` route. Both were checked against eager PyTorch.
Beside ``model.onnx`` a sidecar ``model.onnx.json`` records the preprocessing and
class names, so ``quantize`` and ``bench`` feed the model exactly as it was trained.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import StagedFiles, atomic_path, check_writable, write_json
from ..compare import Equivalence, Tolerance, compare
from ..errors import XrayError
from ..image import Preprocessing, bundled_cat, load_batch
from ..interface import ClassLogits, class_logits, forward_features, forward_head, get_classifier
from ..options import OptionError, batch_fits, check_declared_side, image_side, one_of, option
from ..provenance import sidecar_fields
from .artefact import check_preprocessing, merge_meta, onnx_embedded, read_sidecar, set_onnx_embedded, sidecar_path
from .openvino import inspect_ir, openvino_runner, write_ir

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
CAM_NAME = "cam"  # the second output of an export with cam_output
# The dynamo exporter translates at opset 18 and cannot reliably convert down (it silently keeps 18);
# the TorchScript route writes 9 and up; ONNX Runtime reads up to onnx's own newest.
MIN_OPSET = {"dynamo": 18, "torchscript": 9}


@dataclass
class ExportOptions:
    opset: int | None = option(None, "ONNX opset (default: the exporter's, 18 for dynamo; 18+ for dynamo, 9+ for torchscript)")
    dynamic_batch: bool = option(False, "a symbolic batch dimension; a fixed batch of 1 lets runtimes specialise")
    exporter: str = option("dynamo", "torch.onnx route: dynamo (torch.export) or torchscript (dynamo=False)")
    input_size: int | None = option(None, "square side; None: the crop size of the model's preprocessing")
    batch: int = option(1, "the example batch size (and the fixed one without dynamic_batch)")
    openvino: bool = option(False, "also write OpenVINO IR (model.xml + model.bin) beside the .onnx")
    cam_output: bool = option(False, "a second output 'cam': each class's activation map, fc's weights over layer4's "
                                     "output, which explore draws without gradients; the logits stay the first output")

    def __post_init__(self) -> None:
        import onnx

        one_of("exporter", self.exporter, tuple(MIN_OPSET))
        top = onnx.defs.onnx_opset_version()
        if self.opset is not None and not MIN_OPSET[self.exporter] <= self.opset <= top:
            raise OptionError("opset", self.opset, f"the {self.exporter} exporter writes opsets {MIN_OPSET[self.exporter]} to {top}"
                              + (" (use --exporter torchscript for older ones)" if self.exporter == "dynamo" else ""))
        image_side("input_size", self.input_size, allow_none=True)
        batch_fits("batch", self.batch, self.input_size)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    options: ExportOptions | None = None,
    meta: Any = None,
) -> Path:
    """Write ``model`` as a single-file ONNX model, atomically, plus its JSON sidecar.

    Args:
        model: any module taking a float ``Nx3xHxW`` tensor and returning logits
            (or a dict whose ``class`` entry is the logits); class count and widths are read
            from the model, not assumed.
        path: the ``.onnx`` file to write.
        options: opset, dynamic batch, exporter route, input size.
        meta: the model's :class:`~resnet_xray.model.ModelMeta`; its preprocessing and class
            names go into the sidecar.

    Returns:
        The path written.
    """
    opts = options or ExportOptions()
    out = check_writable(path)
    pre: Preprocessing = meta.preprocessing if meta is not None else Preprocessing.seed()
    size = opts.input_size or pre.crop
    if size != pre.crop:
        # the file takes size x size, so that is what its sidecar must promise to feed it
        pre = pre.scaled_to(size, f"{pre.source}, scaled to {size} px for export")
    example = torch.zeros(opts.batch, 3, size, size)
    base = model.eval()
    model, num_classes = _logits_model(base, example)
    side = _sidecar(opts, size, num_classes, pre, meta)
    if opts.cam_output:
        model, side["cam_output"] = _cam_model(base, example, side["input_shape"][0])
    with atomic_path(out) as tmp:
        try:
            _run_exporter(model, example, tmp, opts)
            _check_and_embed(tmp, opts, side)
        finally:
            # the dynamo exporter may write external data next to tmp for huge models; ours are single-file
            Path(str(tmp) + ".data").unlink(missing_ok=True)
    write_json(sidecar_path(out), side)
    if opts.openvino:
        write_ir(out, out.with_suffix(".xml"), side)
    return out


def _logits_model(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, int]:
    """The model as one that returns the class logits (a multi-task one's ``class`` head), and its class count."""
    with torch.inference_mode():
        probe = model(example)
    if isinstance(probe, dict):
        model = ClassLogits(model)
        probe = class_logits(probe)
    return model, int(probe.shape[1])


class WithCam(nn.Module):
    """The class logits, and beside them each class's activation map: fc's weights over layer4's output.

    That is CAM without gradients: with global average pooling before fc, a map's spatial mean
    plus fc's bias is the class's logit.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        # the model's layers under their own names, the model itself outside the module tree: the file's
        # weights and layers are named as without the cam output, not "model.fc" (``layers`` and INT8 repair read them)
        for name, child in model.named_children():
            self.add_module(name, child)
        self.__dict__["net"] = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = forward_features(self.net, x)
        logits = class_logits(forward_head(self.net, features))
        # a MatMul, not an Einsum: the dynamo exporter pins an Einsum's batch to the example's
        maps = torch.matmul(get_classifier(self.net).weight, features.flatten(2))
        return logits, maps.unflatten(2, features.shape[2:])


def _cam_model(model: nn.Module, example: torch.Tensor, batch: int | str) -> tuple[WithCam, dict[str, Any]]:
    """``model`` with its CAM as a second output, and the sidecar's word on it; refused unless the head is GAP then fc."""
    cam = WithCam(model).eval()  # a wrapper left in training mode puts the model back in it after a torchscript export
    x = torch.randn(1, *example.shape[1:], generator=torch.Generator().manual_seed(0))
    try:
        fc = get_classifier(model)
        with torch.inference_mode():
            logits, maps = cam(x)
            ref = class_logits(model(x))
        pooled = maps.mean((2, 3)) + (fc.bias if fc.bias is not None else 0)
        scale = 1e-4 * max(1.0, float(ref.abs().max()))
        exact = isinstance(fc, nn.Linear) and torch.allclose(logits, ref, 0, scale) and torch.allclose(pooled, ref, 0, scale)
    except (AttributeError, RuntimeError, XrayError):  # no layer4, no fc, or shapes that do not meet
        exact = False
    if not exact:
        raise XrayError("--cam-output: this model's logits are not fc over layer4's average-pooled output, so it has no CAM to export")
    n, h, w = maps.shape[1:]
    return cam, {"name": CAM_NAME, "shape": [batch, n, h, w], "layer": "layer4",
                 "map": "cam[c] = sum_k fc.weight[c, k] * layer4[k], no bias: its spatial mean plus fc.bias[c] is logit c"}


def _sidecar(opts: ExportOptions, size: int, num_classes: int, pre: Preprocessing, meta: Any) -> dict[str, Any]:
    """The description an export carries: how to feed the file, what it outputs, and where its weights came from."""
    side = {
        "format": "resnet-xray onnx sidecar",
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_shape": ["batch" if opts.dynamic_batch else opts.batch, 3, size, size],
        "num_classes": num_classes,
        "export_options": asdict(opts),
        "torch": torch.__version__,
        "preprocessing": pre.to_dict(),
    }
    if meta is not None:
        side.update(arch=meta.arch, weights=meta.weights, pretrained=bool(meta.pretrained), class_names=list(meta.class_names))
        side.update(sidecar_fields(meta.provenance))  # trained / trained_evidence / training, as the checkpoint had them
    return side


def _check_and_embed(path: Path, opts: ExportOptions, side: dict[str, Any]) -> None:
    """Run ONNX's full checker on the written file, record its opset in ``side``, and embed ``side`` in it."""
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    side["opset"] = int(next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0))
    if opts.opset is not None and side["opset"] != opts.opset:
        raise XrayError(f"--opset {opts.opset}: the {opts.exporter} exporter wrote opset {side['opset']} instead")
    # the description travels inside the file, so the .onnx alone is a usable model
    set_onnx_embedded(proto, side)
    onnx.save(proto, str(path))


def _run_exporter(model: nn.Module, example: torch.Tensor, path: Path, opts: ExportOptions) -> None:
    outputs = [OUTPUT_NAME, CAM_NAME] if opts.cam_output else [OUTPUT_NAME]
    kwargs: dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=outputs)
    if opts.opset is not None:
        kwargs["opset_version"] = opts.opset
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            if opts.exporter == "dynamo":
                if opts.dynamic_batch:
                    kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
                torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False, verbose=False, **kwargs)
            else:
                if opts.dynamic_batch:
                    kwargs["dynamic_axes"] = {name: {0: "batch"} for name in (INPUT_NAME, *outputs)}
                torch.onnx.export(model, (example,), str(path), dynamo=False, **kwargs)
        except (ValueError, TypeError, RuntimeError) as e:
            if opts.opset is not None and "opset" in str(e).lower():
                raise XrayError(f"--opset {opts.opset}: not supported by the {opts.exporter} exporter ({str(e).splitlines()[0][:150]})") from None
            raise


# --- reading an ONNX file back ---


@dataclass
class OnnxInfo:
    path: Path
    input_name: str
    input_shape: list[int | str]  # symbolic dims are strings
    output_name: str
    sidecar: dict[str, Any]

    @property
    def image_size(self) -> int:
        """The square side the model takes (inspect_onnx has checked H and W are fixed)."""
        return int(self.input_shape[2])

    @property
    def fixed_batch(self) -> int | None:
        b = self.input_shape[0]
        return b if isinstance(b, int) and b > 0 else None

    @property
    def preprocessing(self) -> Preprocessing:
        pre = self.sidecar.get("preprocessing")
        if pre:
            return check_preprocessing(pre, str(sidecar_path(self.path)), self.image_size)
        # No sidecar: the ImageNet pipeline, cropped to whatever the model takes.
        size = self.image_size
        return Preprocessing.seed().scaled_to(size, f"ImageNet pipeline scaled to {size} px (no sidecar found)")

    @property
    def class_names(self) -> list[str] | None:
        return self.sidecar.get("class_names")


def inspect_onnx(path: str | os.PathLike, flag: str = "") -> OnnxInfo:
    """Validate that ``path`` is an ONNX image classifier with one NCHW float32 input.

    Raises:
        XrayError: not a file, not ONNX, or an input that is not ``Nx3xHxW`` float32.
    """
    import onnx

    p = Path(path)
    where = f"{flag} {p}".strip()
    if not p.exists():
        raise XrayError(f"{where}: no such file")
    if p.is_dir():
        raise XrayError(f"{where}: is a directory, not an ONNX file")
    try:
        proto = onnx.load(str(p), load_external_data=False)
        if not proto.graph.node:
            raise ValueError("no graph nodes")
    except Exception as e:  # noqa: BLE001 - any parse failure means "not ONNX"
        raise XrayError(f"{where}: not an ONNX model ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise XrayError(f"{where}: expected one image input, found {len(inputs)}")
    inp = inputs[0]
    tt = inp.type.tensor_type
    dims: list[int | str] = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in tt.shape.dim]
    if tt.elem_type != onnx.TensorProto.FLOAT:
        raise XrayError(f"{where}: input {inp.name!r} is {onnx.TensorProto.DataType.Name(tt.elem_type)}, expected FLOAT (float32)")
    if len(dims) != 4 or dims[1] != 3 or not all(isinstance(d, int) and d >= 8 for d in dims[2:]):
        raise XrayError(f"{where}: input {inp.name!r} has shape {dims}, expected an NCHW image [N, 3, H, W]")
    if dims[2] != dims[3]:
        raise XrayError(f"{where}: input {inp.name!r} is {dims[2]}x{dims[3]}; only square inputs (a centre crop) are supported")
    check_declared_side(where, int(dims[2]))
    if len(proto.graph.output) < 1:
        raise XrayError(f"{where}: the graph has no output")
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    num_classes = int(out_dims[-1].dim_value) if out_dims and out_dims[-1].HasField("dim_value") else None
    sidecar, side_p = read_sidecar(p)
    merged = merge_meta(onnx_embedded(proto), sidecar, p, side_p, image_size=int(dims[2]), num_classes=num_classes)
    return OnnxInfo(p, inp.name, dims, proto.graph.output[0].name, merged)


def ort_session(path: str | os.PathLike, threads: int | None = None, optimize: bool = True, spin: bool = True):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (None: ORT's default).

    ``spin=False`` stops idle worker threads from busy-waiting: slower on a quiet machine,
    but on a loaded one spinning threads starve each other (checks and calibration use it).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT's own errors name the problem
        raise XrayError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:160]})") from None


def run_ort(session, x: np.ndarray, fixed_batch: int | None = None, output: str | None = None) -> np.ndarray:
    """Run a session on a batch, one image at a time when the model's batch is fixed; ``output``: by name, else the first."""
    name = session.get_inputs()[0].name
    fetch = None if output is None else [output]
    if fixed_batch is None or fixed_batch == x.shape[0]:
        return session.run(fetch, {name: x})[0]
    if fixed_batch != 1:
        raise XrayError(f"the ONNX model has a fixed batch of {fixed_batch}; export with --dynamic-batch or batch 1")
    return np.concatenate([session.run(fetch, {name: x[i : i + 1]})[0] for i in range(x.shape[0])])


def ort_runner(path: Path, info: OnnxInfo, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The file in ONNX Runtime as a NumPy-in, logits-out function (no spinning threads: checks and calibration use it)."""
    sess = ort_session(path, threads, spin=False)
    fixed = info.fixed_batch
    return lambda x: run_ort(sess, x, fixed)


# The TorchScript route exports a ResNet about 3x faster than dynamo, and the pruning loop exports every round.
TIMING_EXPORTER = "torchscript"


def exported_runner(model: nn.Module, path: Path, input_size: int, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Export ``model`` for batch-1 ``input_size`` inputs to ``path`` and return it in ONNX Runtime, to be timed.

    The pruning loop's ONNX Runtime column: it is passed this, so pruning needs no more of deploy than its timer.
    """
    sess = ort_session(export_onnx(model, path, ExportOptions(input_size=input_size, batch=1, exporter=TIMING_EXPORTER)), threads)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


@torch.inference_mode()
def check_onnx(
    path: str | os.PathLike,
    model: nn.Module,
    images: Iterable[str | os.PathLike] | torch.Tensor | None = None,
    *,
    atol: float = 1e-3,
    rtol: float = 1e-4,
) -> dict[str, Any]:
    """Compare ONNX Runtime against eager PyTorch on real images.

    Args:
        path: the ONNX file.
        model: the eager model it was exported from.
        images: image files/folders (preprocessed with the sidecar's pipeline) or a ready
            ``Nx3xHxW`` batch; None means the bundled cat photo.
        atol, rtol: ``passed`` is False when ``max_abs_diff > atol + rtol * max|logit|``
            or any top-1 label differs.

    Returns:
        ``max_abs_diff``, ``mean_abs_diff``, ``top1_agreement``, ``top5_agreement`` (mean
        overlap of the top-5 sets), ``images``, ``passed``, ``tolerance``.
    """
    info = inspect_onnx(path)
    skipped: list = []
    if isinstance(images, torch.Tensor):
        x, names = images.float(), [f"tensor[{i}]" for i in range(images.shape[0])]
    else:
        names, x, skipped = load_batch([bundled_cat(), *(images or [])], info.preprocessing)
    sess = ort_session(path, spin=False)
    got = torch.from_numpy(run_ort(sess, x.numpy(), info.fixed_batch))
    ref = class_logits(model.eval()(x)).float()
    if got.shape != ref.shape:
        raise XrayError(f"{path}: output shape {tuple(got.shape)} differs from the model's {tuple(ref.shape)}; wrong model?")
    eq = compare(ref, got, tolerance=Tolerance(atol=atol, rtol=rtol), names=("eager", "onnxruntime"))
    report = _check_dict(eq, len(names), skipped)
    if CAM_NAME in {o.name for o in sess.get_outputs()}:
        _check_cam(report, run_ort(sess, x.numpy(), info.fixed_batch, CAM_NAME), model, x, Tolerance(atol=atol, rtol=rtol))
    return report


def _check_cam(report: dict[str, Any], got: np.ndarray, model: nn.Module, x: torch.Tensor, tol: Tolerance) -> None:
    """Add the cam output's max |diff| from eager's own maps to ``report``; beyond ``tol`` the check fails."""
    ref = WithCam(model).eval()(x)[1].float().numpy()
    diff = float(np.abs(got - ref).max())
    report["cam_max_abs_diff"] = diff
    if not diff <= tol.atol + tol.rtol * float(np.abs(ref).max()) and report["passed"]:
        report.update(passed=False, reason=f"cam output max abs diff {diff:.3g} beyond {tol.atol:g} + {tol.rtol:g} x max|cam|")


def _check_dict(eq: Equivalence, images: int, skipped: list) -> dict[str, Any]:
    """The export check's report: the equivalence fields plus the names the CLI has always printed."""
    report = eq.to_dict()
    report.update(images=images, top5_agreement=report["top5_overlap"], tolerance=eq.limit,
                  skipped=[{"image": s.path, "reason": s.reason} for s in skipped])
    return report


def export_files(path: Path) -> list[Path]:
    """Every file an export to ``path`` may write (model, IR, sidecars, engines): the set that is replaced whole."""
    xml = path.with_suffix(".xml")
    return [path, sidecar_path(path), xml, xml.with_suffix(".bin"), sidecar_path(xml),
            *(path.with_suffix(f".{precision}.engine") for precision in ("fp16", "int8"))]


class ExportFailed(Exception):
    """A check of the new export failed: nothing was replaced. Carries the reports for the caller to print."""

    def __init__(self, check: dict[str, Any], check_openvino: dict[str, Any] | None):
        super().__init__("the exported model diverges from eager PyTorch")
        self.check, self.check_openvino = check, check_openvino


def export_checked(model: nn.Module, path: str | os.PathLike, options: ExportOptions, meta: Any = None,
                   check: Iterable[str | os.PathLike] = ()) -> tuple[Path, dict[str, Any], dict[str, Any] | None]:
    """Export ``model`` and check it (ONNX Runtime, and OpenVINO when asked) before anything at ``path`` changes.

    The new files are written and checked under temporary names beside ``path``; only when every
    check passes do they replace the earlier export's files, as one set (see
    :class:`~resnet_xray.atomic.StagedFiles`): a failed check, an error or Ctrl-C leaves the earlier
    export whole, and no piece of it (an IR the new export does not write) survives beside the new one.
    Hold ``path``'s :func:`~resnet_xray.locks.file_lock` around it.

    Returns:
        The ``.onnx`` path and the ONNX Runtime and OpenVINO (or None) check reports.

    Raises:
        ExportFailed: a check failed; the earlier files are unchanged.
    """
    out = Path(path)
    check = list(check)
    with StagedFiles(export_files(out)) as stage:
        staged = export_onnx(model, stage.path(out), options, meta)
        rep = check_onnx(staged, model, check)
        rep_ov = check_openvino(staged.with_suffix(".xml"), model, check) if options.openvino else None
        if not rep.get("passed") or (rep_ov is not None and not rep_ov.get("passed")):
            raise ExportFailed(rep, rep_ov)
        stage.commit()
    return out, rep, rep_ov


@torch.inference_mode()
def check_openvino(xml_path: Path, model: nn.Module, images: Iterable[str | os.PathLike] | torch.Tensor | None = None,
                   *, atol: float = 1e-3, rtol: float = 1e-4) -> dict[str, Any]:
    """OpenVINO (FP32 IR) vs eager PyTorch, the same check and report as :func:`check_onnx`."""
    _, info = inspect_ir(xml_path)
    skipped: list = []
    if isinstance(images, torch.Tensor):
        x, n = images.float(), images.shape[0]
    else:
        pre = check_preprocessing(info.meta["preprocessing"], str(xml_path), info.image_size)
        names, x, skipped = load_batch([bundled_cat(), *(images or [])], pre)
        n = len(names)
    fixed = info.input_shape[0] if isinstance(info.input_shape[0], int) else None
    got = openvino_runner(xml_path, batch=fixed)(x.numpy())
    ref = class_logits(model.eval()(x)).float()
    eq = compare(ref, got, tolerance=Tolerance(atol=atol, rtol=rtol), names=("eager", "openvino"))
    return _check_dict(eq, n, skipped)
