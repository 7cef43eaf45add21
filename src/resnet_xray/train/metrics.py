"""Where training numbers go: a per-epoch CSV, TensorBoard when installed, and a confusion-matrix PNG."""

from __future__ import annotations

import csv
import io
import threading
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path, write_text
from ..errors import XrayError


def write_text_atomic(path: Path, text: str) -> None:
    write_text(path, text)


def write_history_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """All epochs so far, rewritten atomically each time (a resumed run keeps the earlier rows)."""
    if not history:
        return
    fields: list[str] = []
    for row in history:
        fields += [k for k in row if k not in fields and not isinstance(row[k], (list, dict))]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items() if k in fields})
    write_text_atomic(path, buf.getvalue())


def _quiet_writer_threads() -> None:
    """Keep a failed write in TensorBoard's writer thread off stderr: the main thread gets the same
    error on its next call and reports it in one line. Other threads' errors print as before."""
    previous = threading.excepthook
    if getattr(previous, "quiets_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard."):
            return
        previous(args)

    hook.quiets_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


class TensorBoardLog:
    """Scalars to TensorBoard if the package is installed; silently nothing otherwise."""

    def __init__(self, log_dir: Path | None) -> None:
        self.writer = None
        if log_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional (pip install resnet-xray[tensorboard])
            return
        self.log_dir = log_dir
        _quiet_writer_threads()
        try:
            self.writer = SummaryWriter(str(log_dir))
        except OSError as e:  # a full disk, met by its writer thread and re-raised here
            raise self._error(e) from None

    def _error(self, e: OSError) -> XrayError:
        return XrayError(f"{self.log_dir}: cannot write TensorBoard logs ({e.strerror or e})")

    @property
    def active(self) -> bool:
        return self.writer is not None

    def epoch(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        try:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.writer.add_scalar(k, v, row["epoch"])
            self.writer.flush()
        except OSError as e:
            self.writer = None  # nothing more can be written; close() must not raise it again
            raise self._error(e) from None

    def close(self) -> None:
        # Called on the way out of a failed run too: raising here would hide why it failed.
        if self.writer is not None:
            writer, self.writer = self.writer, None
            try:
                writer.close()
            except OSError:
                pass


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    """Row-normalised diagonal: of the images of class i, the share predicted as i."""
    totals = confusion.sum(dim=1).clamp(min=1)
    return (confusion.diagonal() / totals).tolist()


def save_confusion_png(confusion: torch.Tensor, class_names: list[str], path: Path, title: str = "") -> Path:
    """Confusion matrix (rows: true class, columns: predicted), counts written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    cm = confusion.cpu().numpy()
    side = max(4.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(side, side), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "validation confusion matrix")
    hi = cm.max() if cm.size else 0
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7, color="white" if cm[i, j] > hi / 2 else "black")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return path
