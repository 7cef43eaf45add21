"""Resumable training checkpoints: model, optimizer, scheduler, scaler, position and RNG states.

A training checkpoint is our ordinary model checkpoint (so ``load_model`` and
``--weights DIR/last.pt`` accept it) with the training state added. Everything in it is
tensors, numbers, strings and containers, so it loads with ``weights_only=True``, and it
is written through :func:`~resnet_xray.model.atomic_torch_save`: a ``kill -9`` leaves
either the previous file or the new one, never half of one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import stale_temporaries
from ..checkpoint import parse_checkpoint, safe_load
from ..errors import XrayError
from ..model import ModelMeta, save_checkpoint

TRAINING_STATE_VERSION = 1


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, in weights_only-safe types."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(
    path: str | Path,
    model: torch.nn.Module,
    meta: ModelMeta,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    epoch: int,
    step_in_epoch: int,
    global_step: int,
    history: list[dict[str, Any]],
    best: dict[str, Any],
    **extra: Any,
) -> Path:
    """Atomically write a checkpoint that :func:`load_training_state` can resume from.

    ``epoch``/``step_in_epoch`` name the next batch to train on.
    """
    state = {
        "training_state_version": TRAINING_STATE_VERSION,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "global_step": global_step,
        "rng": rng_state(),
        "history": history,
        "best": best,
    }
    return save_checkpoint(path, model, meta, **state, **extra)


def load_training_state(path: str | Path, *, arch: str, class_names: list[str], heads: dict | None) -> dict[str, Any]:
    """Read a training checkpoint, refusing one made for another arch, class list or head set.

    Raises:
        XrayError: unreadable file, not a training checkpoint, or a mismatch (one line).
    """
    path = Path(path)
    if not path.exists():
        raise XrayError(f"--resume: no checkpoint at {path}")
    ckpt = safe_load(path, "--resume")
    if not isinstance(ckpt, dict) or "training_state_version" not in ckpt:
        raise XrayError(f"--resume: {path} holds model weights only, no training state to resume from")
    if ckpt.get("arch") != arch:
        raise XrayError(f"--resume: {path} is a {ckpt.get('arch')} checkpoint, not {arch}")
    if list(ckpt.get("class_names", [])) != list(class_names):
        n = len(ckpt.get("class_names", []))
        raise XrayError(f"--resume: {path} was trained on {n} classes, this dataset has {len(class_names)} (or other names)")
    changes = parse_checkpoint(ckpt, path, "--resume").changes
    theirs = _heads_of(changes)
    if (theirs or None) != (heads or None):
        raise XrayError(f"--resume: {path} has heads {sorted(theirs or {})}, this run has {sorted(heads or {})}")
    for c in changes:  # older files name some modules differently
        ckpt["state_dict"] = c.upgrade_state(ckpt["state_dict"])
    return ckpt


def _heads_of(changes: list[Any]) -> dict[str, Any] | None:
    """The head spec the changes leave: the last ``heads`` record, with any later new classifier."""
    heads: dict[str, Any] | None = None
    for c in changes:
        if c.kind == "heads":
            heads = {k: dict(v) for k, v in c.heads.items()}  # type: ignore[attr-defined]
        elif c.kind == "classifier" and heads is not None:  # a new class head after the heads were attached
            heads["class"] = {"kind": "linear", "out": c.num_classes, "hidden": 0}  # type: ignore[attr-defined]
    return heads


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Delete temp files a killed writer left behind (the real checkpoints are untouched)."""
    stale = stale_temporaries(out_dir, ".pt")
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
