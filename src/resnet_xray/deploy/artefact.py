"""What a deployed model carries with it, and how it is checked when read back.

An exported model is only usable if it says how to feed it and how to read its
outputs. The class names, the preprocessing, the arch and where the weights came from
travel inside the file: in ONNX ``metadata_props`` (key ``resnet_xray``) and in
OpenVINO IR ``rt_info`` (``resnet_xray/meta``), as one JSON document. A JSON sidecar
beside the file (``model.onnx.json``, ``model.xml.json``) holds the same plus reports;
it is validated on load, so a malformed or mismatched one is one line and exit 2
rather than an ONNX Runtime traceback or blame put on good images.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import XrayError
from ..image import Preprocessing

META_KEY = "resnet_xray"  # ONNX metadata_props key; OpenVINO rt_info path [META_KEY, "meta"]
META_FIELDS = ("arch", "weights", "class_names", "preprocessing", "num_classes", "pretrained", "trained", "trained_evidence", "training",
               "inference_precision")
# An OpenVINO IR may ask for the arithmetic its float layers run in; OpenVINO grants bf16 only on CPUs that have it.
PRECISION_KEY = "inference_precision"
FLOAT_PRECISIONS = ("f32", "bf16")
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """Where the JSON beside a model file lives: ``model.onnx`` -> ``model.onnx.json``."""
    p = Path(model_path)
    return p.with_name(p.name + ".json")


def artefact_files(path: str | os.PathLike) -> list[Path]:
    """Every file a deployed model consists of: ``.xml`` + ``.bin``, or ``.onnx`` + its external data.

    Sidecars are descriptions, not the model, so they are left out. External data named
    outside the model's folder is not followed (loading refuses it anyway).
    """
    p = Path(path)
    files = [p]
    if p.suffix.lower() == ".xml":
        files.append(p.with_suffix(".bin"))
    elif p.suffix.lower() == ".onnx":
        files += onnx_external_files(p)
    return [f for f in dict.fromkeys(files) if f.is_file()]


def onnx_external_files(path: Path) -> list[Path]:
    """The external-data files an ONNX model names, resolved inside its own folder."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not ONNX: nothing beside it to count
        return []

    def tensors(graph: Any) -> Any:  # initializers, and constants inside nodes and their subgraphs
        yield from graph.initializer
        for node in graph.node:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    yield from tensors(g)

    folder = path.parent.resolve()
    out: list[Path] = []
    for t in tensors(proto.graph):
        if uses_external_data(t):
            f = (folder / ExternalDataInfo(t).location).resolve()
            if f.parent == folder or folder in f.parents:
                out.append(f)
    return out


def artefact_bytes(path: str | os.PathLike) -> int:
    """The size on disk of a deployed model, all of its files together (see :func:`artefact_files`)."""
    return sum(f.stat().st_size for f in artefact_files(path))


def embedded_meta(side: dict[str, Any]) -> dict[str, Any]:
    """The fields that go inside the artefact (a sidecar also holds export options and reports)."""
    return {k: side[k] for k in META_FIELDS if k in side}


def check_preprocessing(d: Any, where: str, image_size: int | None) -> Preprocessing:
    """A :class:`Preprocessing` from a dict, refusing anything that would crash or mislead later."""
    if not isinstance(d, dict):
        raise XrayError(f"{where}: 'preprocessing' must be an object, not {type(d).__name__}")
    def number(key: str, kind: type, lo: float) -> Any:
        v = d.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and int(v) != v) or not math.isfinite(v) or v < lo:
            raise XrayError(f"{where}: preprocessing.{key} is {v!r}; expected {'an integer' if kind is int else 'a number'} >= {lo}")
        return kind(v)

    resize, crop = number("resize", int, 8), number("crop", int, 8)
    if resize < crop:
        raise XrayError(f"{where}: preprocessing.resize {resize} is smaller than its crop {crop}")
    stats = []
    for key in ("mean", "std"):
        v = d.get(key)
        if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
            raise XrayError(f"{where}: preprocessing.{key} is {v!r}; expected 3 numbers (R, G, B)")
        if key == "std" and min(v) <= 0:
            raise XrayError(f"{where}: preprocessing.std {v!r} must be positive")
        stats.append(tuple(float(x) for x in v))
    interp = d.get("interpolation", "bilinear")
    if interp not in INTERPOLATIONS:
        raise XrayError(f"{where}: preprocessing.interpolation {interp!r}; expected one of {', '.join(INTERPOLATIONS)}")
    if image_size is not None and crop != image_size:
        raise XrayError(f"{where}: preprocessing crops to {crop} px but the model takes {image_size}x{image_size}; "
                        "re-export the model or fix the file")
    return Preprocessing(resize, crop, stats[0], stats[1], str(interp), str(d.get("source", "from the model file")))


def check_meta(d: Any, where: str, *, image_size: int | None, num_classes: int | None) -> dict[str, Any]:
    """Validate a model's description (embedded or sidecar); returns it with ``preprocessing`` checked.

    Raises:
        XrayError: one line naming ``where`` and the field.
    """
    if not isinstance(d, dict):
        raise XrayError(f"{where}: expected a JSON object, found {type(d).__name__}")
    if d.get("_malformed"):
        raise XrayError(f"{where}: not valid JSON; re-export the model")
    out = dict(d)
    if "preprocessing" in d:
        check_preprocessing(d["preprocessing"], where, image_size)
    names = d.get("class_names")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise XrayError(f"{where}: 'class_names' must be a list of strings")
        if num_classes is not None and len(names) != num_classes:
            raise XrayError(f"{where}: {len(names)} class names but the model has {num_classes} outputs")
    n = d.get("num_classes")
    if n is not None and num_classes is not None and n != num_classes:
        raise XrayError(f"{where}: says {n} classes but the model has {num_classes} outputs")
    for key in ("arch", "weights"):
        if key in d and d[key] is not None and not isinstance(d[key], str):
            raise XrayError(f"{where}: '{key}' must be a string")
    if d.get(PRECISION_KEY) is not None and d[PRECISION_KEY] not in FLOAT_PRECISIONS:
        raise XrayError(f"{where}: '{PRECISION_KEY}' must be one of {', '.join(FLOAT_PRECISIONS)}, not {d[PRECISION_KEY]!r}")
    return out


def read_sidecar(model_path: Path) -> tuple[dict[str, Any] | None, Path]:
    """The sidecar's JSON (None when there is none); unreadable JSON is a one-line error."""
    side = sidecar_path(model_path)
    if not side.exists():
        return None, side
    try:
        return json.loads(side.read_text()), side
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise XrayError(f"{side}: unreadable sidecar ({str(e).splitlines()[0][:120]}); delete it or re-export") from None


def merge_meta(embedded: dict[str, Any] | None, sidecar: dict[str, Any] | None, model_path: Path, side_path: Path,
               *, image_size: int | None, num_classes: int | None) -> dict[str, Any]:
    """The model's description: embedded first, the sidecar's extras beside it; a disagreement is an error."""
    emb = check_meta(embedded, f"{model_path} (embedded metadata)", image_size=image_size, num_classes=num_classes) if embedded is not None else None
    side = check_meta(sidecar, str(side_path), image_size=image_size, num_classes=num_classes) if sidecar is not None else None
    if emb is not None and side is not None:
        for k in ("class_names", "preprocessing", "arch"):
            if k in emb and k in side and emb[k] != side[k]:
                raise XrayError(f"{side_path}: its {k} differs from the one inside {model_path.name}; delete the sidecar or re-export")
    return {**(side or {}), **(emb or {})}


def onnx_embedded(proto: Any) -> dict[str, Any] | None:
    for p in proto.metadata_props:
        if p.key == META_KEY:
            try:
                return json.loads(p.value)
            except ValueError:
                return {"_malformed": True}
    return None


def set_onnx_embedded(proto: Any, meta: dict[str, Any]) -> None:
    for p in list(proto.metadata_props):
        if p.key == META_KEY:
            proto.metadata_props.remove(p)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(embedded_meta(meta))


def openvino_embedded(model: Any) -> dict[str, Any] | None:
    if not model.has_rt_info([META_KEY, "meta"]):
        return None
    try:
        return json.loads(model.get_rt_info([META_KEY, "meta"]).astype(str))
    except ValueError:
        return {"_malformed": True}


def set_openvino_embedded(model: Any, meta: dict[str, Any]) -> None:
    model.set_rt_info(json.dumps(embedded_meta(meta)), [META_KEY, "meta"])
