"""Build any torchvision ResNet and resolve ``--weights`` the same way for every command.

``load_model(arch, weights)`` is the one way to get a model. It returns the model
(in eval mode) and a :class:`ModelMeta` saying where the weights came from, which
class names go with the outputs and which preprocessing the weights expect.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from .atomic import atomic_path
from .checkpoint import FORMAT_VERSION, STRUCTURE_KEYS, Checkpoint, nonfinite_tensors, parse_checkpoint, safe_load
from .errors import XrayError
from .image import Preprocessing, check_file
from .interface import ReplacedClassifier, get_classifier
from .options import seed_in_range
from .provenance import Provenance, WeightsInfo
from .spec import Change, SpecError, changes_to_data, describe, infer_changes, replay

ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "wide_resnet50_2",
)
DEFAULT_ARCH = "resnet50"
WEIGHT_ALIASES = {"imagenet": "DEFAULT", "imagenet-v1": "IMAGENET1K_V1", "imagenet-v2": "IMAGENET1K_V2"}
CHECKPOINT_FORMAT_VERSION = FORMAT_VERSION
# Offline, a download would otherwise hang on DNS or TCP; the brief allows 30 s in all.
NETWORK_PROBE_TIMEOUT_S = 8.0


@dataclass
class ModelMeta:
    """What travels with a model: enough to label its outputs, feed it, and rebuild it."""

    arch: str
    weights: str  # where the weights came from, in words a user recognises
    class_names: list[str]
    preprocessing: Preprocessing
    pretrained: bool | None  # False for random init: labels are then meaningless; None: the file does not say
    # The ordered structural changes since torchvision's ``arch`` (resnet_xray.spec); every
    # save writes them all and every load replays them, so no caller copies structure by hand.
    changes: list[Change] = field(default_factory=list)
    options: dict[str, Any] | None = None  # options of the run that wrote the checkpoint (its training recipe)
    # Whether the weights are known to be trained, why, and the training runs they had; every
    # save writes it whole, so fuse, prune and export carry it on. None: nothing records it.
    provenance: Provenance | None = None

    def with_change(self, change: Change) -> ModelMeta:
        """This metadata with one more structural change at the end of the list."""
        return replace(self, changes=[*self.changes, change])

    def find(self, kind: str) -> Change | None:
        """The latest change of ``kind`` (``"pruned_widths"``, ``"heads"``, ...), or None."""
        return next((c for c in reversed(self.changes) if c.kind == kind), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "weights": self.weights,
            "preprocessing": self.preprocessing.to_dict(),
            "pretrained": self.pretrained,
            "trained": None if self.provenance is None else self.provenance.trained_value,
            "changes": [c.describe() for c in self.changes],
            "num_classes": len(self.class_names),
        }


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise XrayError(f"--arch {arch!r} is not supported; choose one of: {', '.join(ARCHS)}")
    return arch


def weights_enum(arch: str):
    """torchvision's weights enum for ``arch`` (carries URL, transforms, categories, metadata)."""
    return torchvision.models.get_model_weights(check_arch(arch))


def imagenet_categories(arch: str = DEFAULT_ARCH) -> list[str]:
    """The 1000 ImageNet class names; they ship inside torchvision, so no download is needed."""
    return list(weights_enum(arch).DEFAULT.meta["categories"])


def build_model(arch: str, num_classes: int = 1000) -> nn.Module:
    """An uninitialised-by-download torchvision ResNet (random weights from the current RNG)."""
    return torchvision.models.get_model(check_arch(arch), weights=None, num_classes=num_classes)


def load_model(
    arch: str | None = None,
    weights: str | os.PathLike = "imagenet",
    *,
    seed: int = 0,
    progress: bool = True,
    allow_nonfinite: bool = False,
) -> tuple[nn.Module, ModelMeta]:
    """Build ``arch`` and load ``weights`` into it.

    Args:
        arch: a torchvision ResNet name; ``None`` means the checkpoint's arch, else resnet50.
        weights: ``imagenet``/``imagenet-v1``/``imagenet-v2`` (torchvision enums, downloaded
            once into the torch hub cache), ``random`` (seeded init), or a path to a
            ``.pth``/``.pt`` state_dict or checkpoint dict, or a ``.safetensors`` file.
        seed: RNG seed for ``random`` weights.
        progress: show a download progress bar.
        allow_nonfinite: load a file whose weights hold NaN or Inf (to inspect it); refused otherwise.

    Returns:
        ``(model, meta)`` with the model in eval mode on the CPU.
    """
    seed_in_range("seed", seed)
    w = str(weights)
    if w in WEIGHT_ALIASES:
        return _load_torchvision(arch or DEFAULT_ARCH, w, progress=progress)
    if w == "random":
        arch = check_arch(arch or DEFAULT_ARCH)
        torch.manual_seed(seed)
        model = build_model(arch).eval()
        source = f"random (seed {seed})"
        meta = ModelMeta(arch, source, imagenet_categories(arch), Preprocessing.seed(), False,
                         provenance=Provenance.random_init(source))
        return model, meta
    return _load_file(Path(w), arch, allow_nonfinite=allow_nonfinite)


def torchvision_weights(arch: str, alias: str):
    """The torchvision weights enum member that ``--weights alias`` names for ``arch`` (nothing is downloaded)."""
    enum = weights_enum(arch)
    member = WEIGHT_ALIASES[alias]
    try:
        return enum[member] if member != "DEFAULT" else enum.DEFAULT
    except KeyError:
        have = [k for k, v in WEIGHT_ALIASES.items() if v == "DEFAULT" or v in enum.__members__]
        raise XrayError(f"--weights {alias}: torchvision has no {member} weights for {arch}; try {' or '.join(have)}") from None


def torchvision_source(wts) -> str:
    return f"torchvision {type(wts).__name__}.{wts.name}"


def _load_torchvision(arch: str, alias: str, *, progress: bool) -> tuple[nn.Module, ModelMeta]:
    wts = torchvision_weights(arch, alias)
    cached = cached_weights_path(wts.url)
    if not cached.exists():
        _require_network(wts.url, cached)
    model = build_model(arch)
    try:
        state = wts.get_state_dict(progress=progress, check_hash=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a bad hash is a RuntimeError
        raise XrayError(f"could not fetch {arch} {wts.name} weights ({e}); pass --weights PATH, or put the file at {cached}") from None
    model.load_state_dict(state)
    source = torchvision_source(wts)
    meta = ModelMeta(
        arch=arch,
        weights=source,
        class_names=list(wts.meta["categories"]),
        preprocessing=Preprocessing.from_weights(wts),
        pretrained=True,
        provenance=Provenance.imagenet(source),
    )
    return model.eval(), meta


def cached_weights_path(url: str) -> Path:
    """Where ``torch.hub`` keeps (or will keep) the file behind ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _require_network(url: str, cached: Path) -> None:
    """Fail in seconds, with instructions, when the weights host cannot be reached."""
    host = urlparse(url).hostname or ""
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=NETWORK_PROBE_TIMEOUT_S).close()
            ok.append(True)
        except OSError:
            pass

    # DNS lookups ignore socket timeouts, so the probe runs in a thread we can abandon.
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(NETWORK_PROBE_TIMEOUT_S + 2)
    if not ok:
        raise XrayError(
            f"pretrained weights are not cached and {host} cannot be reached: "
            f"pass --weights PATH (.pth/.pt/.safetensors), or put {os.path.basename(cached)} at {cached}, "
            f"or use --weights random"
        )


# --- files: plain state_dicts, foreign checkpoint dicts, safetensors, and our own format ---


def _read_state(path: Path) -> tuple[Path, Checkpoint]:
    if not path.exists() and not path.is_symlink():
        raise XrayError(f"--weights {path}: no such file (expected imagenet, imagenet-v1, imagenet-v2, random, or a path)")
    if path.is_dir():
        best = path / "best.pt"
        if best.exists():
            path = best
        else:
            raise XrayError(f"--weights {path}: is a directory with no best.pt in it")
    check_file(path, "--weights")  # a FIFO, a symlink loop or an empty file, named as such; never opened
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = {"state_dict": load_file(str(path), device="cpu")}
        except Exception as e:  # noqa: BLE001 - any failure to parse is the file's fault
            raise XrayError(f"--weights {path}: not a loadable weights file ({str(e)[:200]})") from None
    else:
        obj = safe_load(path, "--weights")
    return path, parse_checkpoint(obj, path)


def _clean_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # DDP and torch.compile wrap the model and prefix every key.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _guess_arch(state: dict[str, torch.Tensor]) -> str | None:
    """Find the torchvision ResNet whose parameter names and shapes match ``state``."""
    keys = {k for k in state if not k.startswith("fc.")}
    for arch in ARCHS:
        ref = build_model_on_meta(arch).state_dict()
        ref_keys = {k for k in ref if not k.startswith("fc.")}
        if keys == ref_keys and all(ref[k].shape == state[k].shape for k in keys):
            return arch
    return None


def build_model_on_meta(arch: str, num_classes: int = 1000) -> nn.Module:
    """The model's structure with no memory behind it: for shapes and names only."""
    with torch.device("meta"):
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def _load_file(path: Path, arch: str | None, *, allow_nonfinite: bool = False) -> tuple[nn.Module, ModelMeta]:
    path, ck = _read_state(path)
    state = _clean_keys(ck.state_dict)
    ck_arch = ck.arch
    if ck_arch is not None and arch is not None and ck_arch != arch:
        raise XrayError(f"--weights {path}: checkpoint is for {ck_arch}, not --arch {arch}")
    if ck_arch is None and not ck.changes:
        ck_arch = arch or _guess_arch(state)
        if ck_arch is None:
            raise XrayError(f"--weights {path}: parameters match no supported ResNet; pass --arch")
    if ck_arch is not None and ck_arch not in ARCHS:
        raise XrayError(f"--weights {path}: checkpoint field 'arch' is {ck_arch!r}; supported: {', '.join(ARCHS)}")
    arch = check_arch(ck_arch or arch or DEFAULT_ARCH)
    bad = nonfinite_tensors(state)
    if bad and not allow_nonfinite:
        raise XrayError(f"--weights {path}: {len(bad)} weight tensor(s) hold NaN or Inf (first: {bad[0]}); refused "
                        "(pass --allow-nonfinite, or allow_nonfinite=True, to inspect such a model)")

    changes = ck.changes
    if ck.format_version is None:  # a foreign file: the classifier's size is all that may differ
        fc_w = state.get("fc.weight")
        if fc_w is not None and fc_w.dim() == 2 and fc_w.shape[0] != 1000:
            changes = [ReplacedClassifier(int(fc_w.shape[0]))]
    try:
        model = replay(build_model(arch), changes)
    except (SpecError, XrayError) as e:
        raise XrayError(f"--weights {path}: checkpoint field 'changes' does not rebuild a model ({e})") from None
    for c in changes:
        state = c.upgrade_state(state)
    _load_strict(model, state, path, arch)

    try:
        num_classes = get_classifier(model).out_features
    except XrayError:
        num_classes = None  # a multi-task model without a 'class' head
    class_names = ck.class_names
    if class_names is None:
        n = num_classes or 1000
        class_names = imagenet_categories(arch) if n == 1000 else [f"class_{i}" for i in range(n)]
    elif num_classes is not None and len(class_names) != num_classes:
        raise XrayError(f"--weights {path}: {len(class_names)} class names but the classifier has {num_classes} outputs")

    provenance = ck.provenance or inspect_training(path, state, arch, ours=ck.format_version is not None)
    meta = ModelMeta(
        arch=arch,
        weights=str(path),
        class_names=list(class_names),
        preprocessing=ck.preprocessing or Preprocessing.seed(),
        pretrained=provenance.trained is not False,
        changes=list(changes),
        options=ck.options,
        provenance=provenance,
    )
    return model.eval(), meta


# BatchNorm's initial state: what a layer holds until a training-mode forward pass or an optimiser step touches it.
_BN_INITIAL = {"running_mean": 0.0, "running_var": 1.0, "weight": 1.0, "bias": 0.0}


def inspect_training(path: Path, state: dict[str, torch.Tensor], arch: str, *, ours: bool = False) -> Provenance:
    """What a weights file that does not record its training shows of it.

    torchvision's own published file (its name and hash prefix match) is trained on ImageNet.
    Otherwise the BatchNorm layers are read: if every one still holds its initial statistics
    (running_mean 0, running_var 1, weight 1, bias 0), no training ever touched the weights.
    Anything else cannot tell trained weights from weights that only saw data, so it is "unknown".
    """
    if _is_torchvision_file(path, arch):
        return Provenance.imagenet(f"{path.name} (torchvision's published {arch} file, hash checked)")
    older = "an older resnet-xray checkpoint that does not record its training" if ours else "the file does not record its training"
    layers = [k[: -len(".running_mean")] for k in state if k.endswith(".running_mean")]
    if not layers:
        return Provenance(None, f"{older}, and it has no BatchNorm layers to inspect (folded into the convolutions?)")
    for layer in layers:
        for name, value in _BN_INITIAL.items():
            t = state.get(f"{layer}.{name}")
            if t is not None and not bool((t == value).all()):
                return Provenance(None, f"{older}; its BatchNorm statistics have moved from their initial values "
                                        f"(first: {layer}.{name}), so it has seen data, but not necessarily been trained")
    return Provenance(False, f"every one of the {len(layers)} BatchNorm layers still holds its initial "
                             "statistics (running_mean 0, running_var 1, weight 1, bias 0): no training step ever touched it")


def _is_torchvision_file(path: Path, arch: str) -> bool:
    """Whether ``path`` is one of torchvision's published files for ``arch``, by name and the hash prefix in it."""
    names = {os.path.basename(urlparse(w.url).path) for w in weights_enum(arch)}
    if path.name not in names:
        return False
    prefix = path.stem.rsplit("-", 1)[-1]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().startswith(prefix)


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            k = mismatched[0]
            parts.append(f"{len(mismatched)} shape mismatches (first: {k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        raise XrayError(f"--weights {path}: does not fit {arch}: {'; '.join(parts)}")
    # load_state_dict casts silently: int8 codes would load as float weights, their scales lost
    cast = [k for k in own if own[k].is_floating_point() and not state[k].is_floating_point()]
    if cast:
        k = cast[0]
        raise XrayError(f"--weights {path}: {len(cast)} tensor(s) hold {str(state[k].dtype).removeprefix('torch.')} values where "
                        f"the model takes {str(own[k].dtype).removeprefix('torch.')} (first: {k}); refused, as quantized codes "
                        "without their scales are no weights. Save the float weights (dequantize first)")
    model.load_state_dict(state)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: ModelMeta, **extra: Any) -> Path:
    """Write this project's checkpoint format atomically (temp file, then rename).

    The whole of ``meta.changes`` is written, and checked first: replayed on ``meta.arch``
    it must give exactly ``model``'s parameter names and shapes, so a checkpoint that
    ``load_model`` could not rebuild is never written. Metadata with no changes at all
    (made by hand) gets them read off the model's structure. The result loads with
    ``torch.load(weights_only=True)``. ``extra`` holds plain-data keys such as ``options``,
    ``metrics`` and a training state.
    """
    structural = sorted(set(extra) & set(STRUCTURE_KEYS))
    if structural:
        raise TypeError(f"save_checkpoint: {structural[0]!r} is structure; record it in meta.changes (meta.with_change(...))")
    if "provenance" in extra:
        raise TypeError("save_checkpoint: 'provenance' travels in meta.provenance, which every save writes whole")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if not meta.changes:  # metadata made by hand for a model changed by hand: read the changes off it
        meta = replace(meta, changes=changes_of(model, meta.arch))
    check_changes_rebuild(model, meta, state)
    try:
        n_out = get_classifier(model).out_features
    except XrayError:
        n_out = None  # a multi-task model without a 'class' head
    if n_out is not None and n_out != len(meta.class_names):
        raise ValueError(f"meta has {len(meta.class_names)} class names but the classifier has {n_out} outputs")
    ckpt = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "arch": meta.arch,
        "class_names": list(meta.class_names),
        "preprocessing": meta.preprocessing.to_dict(),
        "state_dict": state,
        "changes": changes_to_data(meta.changes),
        **({"provenance": meta.provenance.to_data()} if meta.provenance is not None else {}),
        **extra,
    }
    return atomic_torch_save(ckpt, path)


def check_changes_rebuild(model: nn.Module, meta: ModelMeta, state: dict[str, torch.Tensor] | None = None) -> None:
    """Raise ``ValueError`` unless replaying ``meta.changes`` on ``meta.arch`` gives ``model``'s parameter shapes."""
    state = state if state is not None else model.state_dict()
    try:
        with torch.device("meta"):
            rebuilt = replay(build_model_on_meta(meta.arch), meta.changes).state_dict()
    except (SpecError, XrayError) as e:
        raise ValueError(f"the model's recorded changes ({describe(meta.changes)}) do not replay: {e}") from None
    diff = [k for k in state if k not in rebuilt] + [k for k in rebuilt if k not in state]
    diff += [k for k in state if k in rebuilt and tuple(state[k].shape) != tuple(rebuilt[k].shape)]
    if diff:
        raise ValueError(
            f"the model's recorded changes ({describe(meta.changes)}) do not rebuild it: {len(diff)} parameters differ "
            f"(first: {diff[0]}); record each structural change with meta.with_change(...)"
        )


def changes_of(model: nn.Module, arch: str) -> list[Change]:
    """The changes that make ``arch`` into ``model``, read off its structure (for models changed without a record)."""
    return infer_changes(model, build_model_on_meta(arch))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise XrayError(f"cannot create directory {path.parent}: {e.strerror}") from None
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as raw:
        sink = _WriteErrors(raw)
        try:
            torch.save(obj, sink)
        except RuntimeError:
            # torch's zip writer reports a failed write (a full disk) as an opaque RuntimeError;
            # re-raise the OSError underneath, which atomic_path turns into one line naming the file.
            if sink.error is not None:
                raise sink.error from None
            raise
    return path


class _WriteErrors(io.RawIOBase):
    """A file wrapper that keeps the ``OSError`` of a failed write, which torch.save would hide."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = e
            raise


def random_weights_warning(meta: ModelMeta) -> str | None:
    return WeightsInfo.of(meta).warning



# --- the model as one object, as every verb takes it ---


@dataclass
class LoadedModel:
    """A model and its metadata, as one object.

    ``module`` is the ``nn.Module`` (eval mode, CPU); ``meta`` says which class names go
    with its outputs, which preprocessing it expects, where its weights came from and
    which structural changes it carries. Calling it runs the module, and it unpacks as
    ``module, meta`` for code written against :func:`load_model`.
    """

    module: nn.Module
    meta: ModelMeta

    def __iter__(self):
        return iter((self.module, self.meta))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    @property
    def arch(self) -> str:
        return self.meta.arch

    @property
    def class_names(self) -> list[str]:
        return self.meta.class_names

    @property
    def weights(self) -> WeightsInfo:
        return WeightsInfo.of(self.meta)

    def to_dict(self) -> dict[str, Any]:
        return {**self.meta.to_dict(), "weights": self.weights.to_dict()}


def as_model(model: Any, *, arch: str | None = None) -> LoadedModel:
    """What every verb accepts: a LoadedModel, a ``(module, meta)`` pair, a weights path or a torchvision arch name."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, tuple) and len(model) == 2:
        return LoadedModel(*model)
    if isinstance(model, (str, os.PathLike)):
        if str(model) in ARCHS:  # rx.classify("resnet18", ...) means torchvision's pretrained weights
            return LoadedModel(*load_model(str(model)))
        return LoadedModel(*load_model(arch, model))
    raise TypeError(
        f"expected rx.load_model(...)'s result, a (module, meta) pair or a weights path, not {type(model).__name__}; "
        "a bare nn.Module has no class names or preprocessing"
    )


def weights_info(weights: Any, arch: str | None = None, *, seed: int = 0) -> WeightsInfo:
    """The provenance of ``weights`` as given to a verb that loaded them itself: read from the weights, never assumed.

    A file or a torchvision alias is loaded again for its own record (whether it was trained, and on
    what); saying ``trained`` without looking is what made a random-init file pass for a trained one.
    """
    if weights is None:
        return WeightsInfo.none("no weights: only the ImageNet pipeline's preprocessing was applied")
    if str(weights) == "random":
        return WeightsInfo.random(f"random (seed {seed})")
    if str(weights) in WEIGHT_ALIASES:  # known without loading (and without the network)
        source = torchvision_source(torchvision_weights(arch or DEFAULT_ARCH, str(weights)))
        return WeightsInfo.from_provenance(source, Provenance.imagenet(source))
    return WeightsInfo.of(load_model(arch, weights, progress=False)[1])
