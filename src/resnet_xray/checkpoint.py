"""Our checkpoint format: its schema, and the one safe way to read a weights file.

A checkpoint is a dict of plain data (loadable with ``torch.load(weights_only=True)``)::

    format_version  int     2 (1: the first release, with pruned_spec/heads/fused_pairs keys)
    arch            str     the torchvision ResNet it was built from
    class_names     [str]   one per classifier output
    preprocessing   dict    Preprocessing fields (resize, crop, mean, std, interpolation, source)
    state_dict      {str: Tensor}
    changes         [dict]  the ordered structural changes (resnet_xray.spec), each {"kind": ...}
    options         dict    options of the run that wrote it (optional)
    metrics         dict    (optional)
    provenance      dict    whether the weights are trained and the training runs they had
                            (resnet_xray.provenance.Provenance; optional: files without it
                            are inspected, and "unknown" where nothing says either way)

plus, in training checkpoints, the training state (``train/checkpoint.py``).
:func:`parse_checkpoint` checks every field and raises one line naming the file and
the field; nothing malformed reaches a model.
"""

from __future__ import annotations

import math
import pickle
import pickletools
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import XrayError
from .image import Preprocessing
from . import options as limits  # read through the module: the machine's memory is one swappable place
from .provenance import Provenance
from .spec import Change, SpecError, changes_from_data, change_type
from .units import si

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# Keys of our format; anything else at the top level belongs to the training state or is ignored.
STRUCTURE_KEYS = ("changes", "pruned_spec", "heads", "fused_pairs")
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")


@dataclass
class Checkpoint:
    """A checked checkpoint: every field typed, the changes ready to replay."""

    state_dict: dict[str, torch.Tensor]
    arch: str | None = None  # None: a foreign file; found from the parameter shapes
    class_names: list[str] | None = None
    preprocessing: Preprocessing | None = None
    changes: list[Change] = field(default_factory=list)
    options: dict[str, Any] | None = None
    provenance: Provenance | None = None  # None: the file does not record its training
    format_version: int | None = None  # None: not our format (a plain or foreign state_dict)
    legacy: bool = False  # the changes were rebuilt from format-1 keys (or guessed from shapes)


def safe_load(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)``; a file that would run code is refused, naming the global it needs."""
    refuse_deployed(path, what)
    check_zip_sizes(path, what)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a refusal below says it better
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise XrayError(f"{what} {path}: {_refusal(path, str(e))}") from None
        raise XrayError(f"{what} {path}: not a loadable weights file ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - any failure to parse is the file's fault
        if not zipfile.is_zipfile(path) and not _is_pickle(path):
            raise XrayError(f"{what} {path}: {NOT_TORCH}") from None
        raise XrayError(f"{what} {path}: not a loadable weights file ({_first_line(e)})") from None


NOT_TORCH = "not a PyTorch weights file (neither torch's zip format nor a pickle)"
# torch.save stores its members uncompressed; weights recompressed by hand shrink a few times at most,
# while a decompression bomb's zeros deflate ~1000x.
MAX_ZIP_RATIO = 100


def check_zip_sizes(path: Path, what: str) -> None:
    """Refuse a zip whose members claim more bytes than it can honestly hold, before torch.load allocates them.

    torch's reader allocates each member's declared size: a 4 MB file whose member claims 4 GiB
    would take 4 GiB of memory. A member may inflate at most :data:`MAX_ZIP_RATIO` times, a stored
    one not at all, and all of them together must fit in this machine's memory.
    """
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # torch.load names what is wrong with it
    size = path.stat().st_size
    for m in members:
        stored = m.compress_type == zipfile.ZIP_STORED
        if m.compress_size > size or (stored and m.file_size != m.compress_size) or (
                m.file_size > MAX_ZIP_RATIO * max(m.compress_size, 1024)):
            raise XrayError(f"{what} {path}: member {m.filename!r} claims {m.file_size:,} bytes from {m.compress_size:,} "
                            f"in a {size:,}-byte file; refused unread (not a weights file, or a decompression bomb)")
    total = sum(m.file_size for m in members)
    if total > limits.memory_bytes():
        raise XrayError(f"{what} {path}: its members claim {si(total)}B, more than this machine's "
                        f"{si(limits.memory_bytes())}B of memory; refused unread")



def _first_line(e: BaseException) -> str:
    return (str(e).splitlines()[0] if str(e) else type(e).__name__)[:200]


def _refusal(path: Path, message: str) -> str:
    """Why torch's weights-only loader stopped, in one clause: a global it would call, or not a pickle at all."""
    m = re.search(r"GLOBAL ([\w.]+)", message)
    if m:
        return f"refused: loading it would run code (it calls {m.group(1)}), which a weights file never needs"
    names = _pickle_globals(path)
    risky = [n for n in names if not n.startswith("torch.") and n != "collections.OrderedDict"]
    if risky:
        return f"refused: loading it would run code (it calls {risky[0]}), which a weights file never needs"
    if not _is_pickle(path):
        return NOT_TORCH
    op = re.search(r"Unsupported operand (\d+)", message)
    name = _opcode_name(int(op.group(1))) if op else None
    return f"refused: it uses a pickle instruction{f' ({name})' if name else ''} that torch's safe loader does not read"


def _opcode_name(code: int) -> str | None:
    return next((o.name for o in pickletools.opcodes if o.code == chr(code)), None)


def _is_pickle(path: Path, limit: int = 1 << 20) -> bool:
    """Whether the file opens with one well-formed pickle (read with pickletools: nothing is executed)."""
    try:
        with open(path, "rb") as f:
            for op, _, pos in pickletools.genops(f):
                if op.name == "STOP":
                    return True
                if pos > limit:
                    return True  # well-formed so far, and too long to read to the end
    except Exception:  # noqa: BLE001 - any parse error means it is not a pickle
        return False
    return False


# Deployed artefacts take --model; passed as --weights they would reach torch.load and read as garbage.
_MODEL_FLAG_USERS = "classify, evaluate and bench take it"


def deployed_kind(path: Path) -> str | None:
    """Which deployed model format ``path`` holds, by its first bytes or its suffix; None for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None  # torch's zip format or a pickle, whatever the name (Hugging Face's pytorch_model.bin)
    suffix = path.suffix.lower()
    # ModelProto opens with field 1 (ir_version, a one-byte varint), then a length-delimited field.
    if suffix == ".onnx" or (len(head) > 2 and head[0] == 0x08 and 0 < head[1] < 0x80 and head[2] & 0x07 == 2):
        return "an ONNX model"
    if suffix == ".xml" or head.lstrip().startswith(b"<?xml") or b"<net " in head:
        return "an OpenVINO IR model"
    if suffix == ".bin":
        return "OpenVINO IR weights"
    return None


def refuse_deployed(path: Path, what: str) -> None:
    """Refuse a deployed model given where weights belong, naming the flag that takes it."""
    kind = deployed_kind(path)
    if kind is None:
        return
    target = path
    if kind == "OpenVINO IR weights":  # --model takes the .xml; the .bin beside it is read with it
        target = path.with_suffix(".xml")
        kind += f" (the .bin beside {target.name})" if target.exists() else " (an IR's .bin)"
    raise XrayError(f"{what} {path}: {kind}, a deployed file, not PyTorch weights: pass --model {target} "
                    f"({_MODEL_FLAG_USERS})")


def _pickle_globals(path: Path, limit: int = 16 << 20) -> list[str]:
    """The globals a (non-zip) pickle names, read with pickletools: nothing is executed."""
    if zipfile.is_zipfile(path):
        return []
    found: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, pos in pickletools.genops(f):
                if pos > limit:
                    break
                if op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
                if op.name == "STOP":
                    break
    except Exception:  # noqa: BLE001 - a corrupt stream just names nothing
        pass
    return found


def parse_checkpoint(obj: Any, path: Path, what: str = "--weights") -> Checkpoint:
    """Check every field of a loaded weights file and return it typed.

    Accepts our format (``format_version``), foreign checkpoint dicts (``state_dict`` or
    ``model``) and plain state_dicts.

    Raises:
        XrayError: one line naming the file and the malformed field.
    """

    def bad(field_name: str, why: str) -> XrayError:
        return XrayError(f"{what} {path}: checkpoint field '{field_name}' {why}")

    if not isinstance(obj, dict):
        raise XrayError(f"{what} {path}: expected a state_dict or checkpoint dict, found {type(obj).__name__}")
    if "format_version" not in obj:
        return _foreign(obj, path, what, bad)
    version = obj["format_version"]
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise bad("format_version", f"is {version!r}; this release reads {' and '.join(map(str, READABLE_VERSIONS))}")
    if "state_dict" not in obj:
        raise bad("state_dict", "is missing")
    ck = Checkpoint(_state(obj["state_dict"], "state_dict", bad), format_version=version)
    _read_description(obj, ck, path, what, bad)
    _read_structure(obj, ck, path, what, bad)
    return ck


def _foreign(obj: dict, path: Path, what: str, bad) -> Checkpoint:
    """A dict without our format_version: another tool's checkpoint dict, or a plain state_dict."""
    if "state_dict" in obj:
        return Checkpoint(_state(obj["state_dict"], "state_dict", bad), legacy=True)
    if isinstance(obj.get("model"), dict):
        return Checkpoint(_state(obj["model"], "model", bad), legacy=True)
    if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return Checkpoint(dict(obj), legacy=True)
    raise XrayError(f"{what} {path}: a dict with neither 'state_dict' nor 'model' in it, and not a state_dict")


def _read_description(obj: dict, ck: Checkpoint, path: Path, what: str, bad) -> None:
    """The fields that describe the weights (arch, classes, preprocessing, options, metrics, provenance) into ``ck``."""
    arch = obj.get("arch")
    if arch is not None and not isinstance(arch, str):
        raise bad("arch", f"must be a string, found {type(arch).__name__}")
    ck.arch = arch
    names = obj.get("class_names")
    if names is not None:
        if not isinstance(names, list | tuple) or not names or not all(isinstance(n, str) for n in names):
            raise bad("class_names", "must be a non-empty list of strings")
        ck.class_names = list(names)
    if obj.get("preprocessing") is not None:
        ck.preprocessing = _preprocessing(obj["preprocessing"], bad)
    options = obj.get("options")
    if options is not None and not isinstance(options, dict):
        raise bad("options", f"must be a dict, found {type(options).__name__}")
    ck.options = options
    if obj.get("metrics") is not None and not isinstance(obj["metrics"], dict):
        raise bad("metrics", f"must be a dict, found {type(obj['metrics']).__name__}")
    if obj.get("provenance") is not None:
        try:
            ck.provenance = Provenance.from_data(obj["provenance"])
        except ValueError as e:
            raise XrayError(f"{what} {path}: checkpoint field 'provenance'{e if str(e)[:1] in '. ' else ': ' + str(e)}") from None


def _read_structure(obj: dict, ck: Checkpoint, path: Path, what: str, bad) -> None:
    """The structural changes into ``ck``: format 2's ``changes`` list, or format 1's separate keys."""
    if ck.format_version >= 2:
        for k in ("pruned_spec", "heads", "fused_pairs"):
            if k in obj:
                raise bad(k, "belongs to format 1; format 2 records it in 'changes'")
        try:
            ck.changes = changes_from_data(obj.get("changes", []))
        except SpecError as e:
            raise XrayError(f"{what} {path}: checkpoint field 'changes'{e if str(e).startswith('[') else ': ' + str(e)}") from None
    else:
        ck.changes = _legacy_changes(obj, ck.state_dict, bad)
        ck.legacy = True


def _state(state: Any, name: str, bad) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not state:
        raise bad(name, "must be a non-empty dict of tensors")
    for k, v in state.items():
        if not isinstance(k, str):
            raise bad(name, f"has a key that is not a string ({k!r})")
        if not isinstance(v, torch.Tensor):
            raise bad(f"{name}.{k}", f"must be a tensor, found {type(v).__name__}")
    return state


def _preprocessing(d: Any, bad) -> Preprocessing:
    if not isinstance(d, dict):
        raise bad("preprocessing", f"must be a dict, found {type(d).__name__}")
    allowed = {"resize", "crop", "mean", "std", "interpolation", "source"}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise bad(f"preprocessing.{unknown[0]}", f"is unknown (fields: {', '.join(sorted(allowed))})")
    for k in ("resize", "crop"):
        if k not in d:
            raise bad(f"preprocessing.{k}", "is missing")
        if type(d[k]) is not int or not 1 <= d[k] <= 4096:
            raise bad(f"preprocessing.{k}", f"must be an int from 1 to 4096, found {d[k]!r}")
    for k in ("mean", "std"):
        v = d.get(k)
        if v is None:
            raise bad(f"preprocessing.{k}", "is missing")
        if not isinstance(v, list | tuple) or len(v) != 3 or not all(isinstance(x, int | float) and math.isfinite(x) for x in v):
            raise bad(f"preprocessing.{k}", f"must be 3 finite numbers (one per RGB channel), found {v!r}")
        if k == "std" and not all(x > 0 for x in v):
            raise bad("preprocessing.std", f"must be positive, found {v!r}")
    interp = d.get("interpolation", "bilinear")
    if interp not in INTERPOLATIONS:
        raise bad("preprocessing.interpolation", f"must be one of {', '.join(INTERPOLATIONS)}, found {interp!r}")
    if not isinstance(d.get("source", ""), str):
        raise bad("preprocessing.source", "must be a string")
    return Preprocessing.from_dict(d)


def _legacy_changes(obj: dict[str, Any], state: dict[str, torch.Tensor], bad) -> list[Change]:
    """Format 1 kept the structure in three keys; the replay order then was classifier, widths, heads, fusion."""
    changes: list[Change] = []
    fc = state.get("fc.weight")
    if fc is not None and fc.dim() == 2 and fc.shape[0] != 1000:
        changes.append(change_type("classifier").from_data({"num_classes": int(fc.shape[0])}))
    try:
        if obj.get("pruned_spec") is not None:
            changes.append(change_type("pruned_widths").from_spec(obj["pruned_spec"]))  # type: ignore[attr-defined]
    except SpecError as e:
        raise bad("pruned_spec", str(e)) from None
    if obj.get("heads") is not None:
        heads = obj["heads"]
        if not isinstance(heads, dict):
            raise bad("heads", f"must be a dict of {{name: spec}}, found {type(heads).__name__}")
        try:
            changes.append(change_type("heads").from_data({"heads": heads}))
        except (SpecError, TypeError, ValueError) as e:
            raise bad("heads", str(e)) from None
    if obj.get("fused_pairs") is not None:
        try:
            changes.append(change_type("fused_batchnorm").from_data({"pairs": obj["fused_pairs"]}))
        except (SpecError, TypeError, ValueError) as e:
            raise bad("fused_pairs", str(e)) from None
    return changes


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or Inf."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
