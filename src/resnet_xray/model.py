"""Build any torchvision ResNet and resolve ``--weights`` the same way for every command.

``load_model(arch, weights)`` is the one way to get a model. It returns the model
(in eval mode) and a :class:`ModelMeta` saying where the weights came from, which
class names go with the outputs and which preprocessing the weights expect.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from .atomic import atomic_path
from .errors import XrayError
from .image import Preprocessing

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
CHECKPOINT_FORMAT_VERSION = 1
# Offline, a download would otherwise hang on DNS or TCP; the brief allows 30 s in all.
NETWORK_PROBE_TIMEOUT_S = 8.0


@dataclass
class ModelMeta:
    """What travels with a model: enough to label its outputs and feed it correctly."""

    arch: str
    weights: str  # where the weights came from, in words a user recognises
    class_names: list[str]
    preprocessing: Preprocessing
    pretrained: bool  # False for random init: labels are then meaningless
    extras: dict[str, Any] = field(default_factory=dict)  # checkpoint keys such as heads, pruned_spec

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        d["num_classes"] = len(self.class_names)
        d.pop("class_names")
        d.pop("extras")
        return d


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
) -> tuple[nn.Module, ModelMeta]:
    """Build ``arch`` and load ``weights`` into it.

    Args:
        arch: a torchvision ResNet name; ``None`` means the checkpoint's arch, else resnet50.
        weights: ``imagenet``/``imagenet-v1``/``imagenet-v2`` (torchvision enums, downloaded
            once into the torch hub cache), ``random`` (seeded init), or a path to a
            ``.pth``/``.pt`` state_dict or checkpoint dict, or a ``.safetensors`` file.
        seed: RNG seed for ``random`` weights.
        progress: show a download progress bar.

    Returns:
        ``(model, meta)`` with the model in eval mode on the CPU.
    """
    w = str(weights)
    if w in WEIGHT_ALIASES:
        return _load_torchvision(arch or DEFAULT_ARCH, w, progress=progress)
    if w == "random":
        arch = check_arch(arch or DEFAULT_ARCH)
        torch.manual_seed(seed)
        model = build_model(arch).eval()
        meta = ModelMeta(arch, f"random (seed {seed})", imagenet_categories(arch), Preprocessing.seed(), False)
        return model, meta
    return _load_file(Path(w), arch)


def _load_torchvision(arch: str, alias: str, *, progress: bool) -> tuple[nn.Module, ModelMeta]:
    enum = weights_enum(arch)
    member = WEIGHT_ALIASES[alias]
    try:
        wts = enum[member] if member != "DEFAULT" else enum.DEFAULT
    except KeyError:
        have = [k for k, v in WEIGHT_ALIASES.items() if v == "DEFAULT" or v in enum.__members__]
        raise XrayError(f"--weights {alias}: torchvision has no {member} weights for {arch}; try {' or '.join(have)}") from None
    cached = cached_weights_path(wts.url)
    if not cached.exists():
        _require_network(wts.url, cached)
    model = build_model(arch)
    try:
        state = wts.get_state_dict(progress=progress, check_hash=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a bad hash is a RuntimeError
        raise XrayError(f"could not fetch {arch} {wts.name} weights ({e}); pass --weights PATH, or put the file at {cached}") from None
    model.load_state_dict(state)
    meta = ModelMeta(
        arch=arch,
        weights=f"torchvision {type(wts).__name__}.{wts.name}",
        class_names=list(wts.meta["categories"]),
        preprocessing=Preprocessing.from_weights(wts),
        pretrained=True,
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


def _read_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise XrayError(f"--weights {path}: no such file (expected imagenet, imagenet-v1, imagenet-v2, random, or a path)")
    if path.is_dir():
        best = path / "best.pt"
        if best.exists():
            path = best
        else:
            raise XrayError(f"--weights {path}: is a directory with no best.pt in it")
    if path.stat().st_size == 0:
        raise XrayError(f"--weights {path}: file is empty")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return {"state_dict": load_file(str(path), device="cpu")}
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to parse is the file's fault
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise XrayError(f"--weights {path}: not a loadable weights file ({reason[:200]})") from None
    if not isinstance(obj, dict):
        raise XrayError(f"--weights {path}: expected a state_dict or checkpoint dict, found {type(obj).__name__}")
    if "format_version" in obj or "state_dict" in obj:
        return obj
    if "model" in obj and isinstance(obj["model"], dict):
        return {**obj, "state_dict": obj["model"]}
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"state_dict": obj}
    raise XrayError(f"--weights {path}: a dict with neither 'state_dict' nor 'model' in it, and not a state_dict")


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


def _load_file(path: Path, arch: str | None) -> tuple[nn.Module, ModelMeta]:
    ckpt = _read_state(path)
    state = ckpt["state_dict"]
    if not isinstance(state, dict):
        raise XrayError(f"--weights {path}: 'state_dict' is not a dict of tensors")
    state = _clean_keys(state)
    ck_arch = ckpt.get("arch")
    if ck_arch is not None and arch is not None and ck_arch != arch:
        raise XrayError(f"--weights {path}: checkpoint is for {ck_arch}, not --arch {arch}")
    if ck_arch is None and ckpt.get("pruned_spec") is None:
        ck_arch = arch or _guess_arch(state)
        if ck_arch is None:
            raise XrayError(f"--weights {path}: parameters match no supported ResNet; pass --arch")
    arch = check_arch(ck_arch or arch or DEFAULT_ARCH)

    class_names = ckpt.get("class_names")
    fc_w = state.get("fc.weight")
    num_classes = int(fc_w.shape[0]) if fc_w is not None else len(class_names or []) or 1000
    if class_names is None:
        class_names = imagenet_categories(arch) if num_classes == 1000 else [f"class_{i}" for i in range(num_classes)]
    elif len(class_names) != num_classes:
        raise XrayError(f"--weights {path}: {len(class_names)} class names but the classifier has {num_classes} outputs")

    model = build_model(arch, num_classes=num_classes)
    if ckpt.get("pruned_spec") is not None:
        from .prune.spec import apply_pruned_spec  # only pruned checkpoints need it

        model = apply_pruned_spec(model, ckpt["pruned_spec"])
    if ckpt.get("heads") is not None:
        from .train.heads import attach_heads  # only multi-task checkpoints need it

        model = attach_heads(model, ckpt["heads"])
    if ckpt.get("fused_pairs") is not None:
        from .deploy.fuse import (
            fused_structure,  # only fused checkpoints need it (BN folded into convs)
        )

        model = fused_structure(model, [tuple(p) for p in ckpt["fused_pairs"]])
    _load_strict(model, state, path, arch)

    pre = ckpt.get("preprocessing")
    meta = ModelMeta(
        arch=arch,
        weights=str(path),
        class_names=list(class_names),
        preprocessing=Preprocessing.from_dict(pre) if pre else Preprocessing.seed(),
        pretrained=True,
        extras={k: ckpt[k] for k in ("heads", "pruned_spec", "options", "format_version", "fused_pairs") if k in ckpt},
    )
    return model.eval(), meta


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
    model.load_state_dict(state)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: ModelMeta, **extra: Any) -> Path:
    """Write this project's checkpoint format atomically (temp file, then rename).

    The result loads with ``torch.load(weights_only=True)`` and through ``load_model``.
    ``extra`` holds optional keys such as ``heads``, ``pruned_spec``, ``options``.
    """
    ckpt = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "arch": meta.arch,
        "class_names": list(meta.class_names),
        "preprocessing": meta.preprocessing.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    return atomic_torch_save(ckpt, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise XrayError(f"cannot create directory {path.parent}: {e.strerror}") from None
    with atomic_path(path, fsync=True) as tmp:
        torch.save(obj, tmp)
    return path


def random_weights_warning(meta: ModelMeta) -> str | None:
    if meta.pretrained:
        return None
    return (
        "WARNING: using RANDOM weights; the labels below are meaningless. "
        "Pass --weights imagenet with network access, or --weights PATH to a saved file."
    )

