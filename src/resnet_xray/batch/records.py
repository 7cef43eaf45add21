"""The results file of a batch job: one record per image, appended in whole batches, resumable.

A record is ``{"path", "topk": [{"label", "index", "prob"}], "error", "model"}``; ``error`` is null
for a classified image and says why for an unreadable one (its ``topk`` is empty). Two formats:

* ``.jsonl``: one line per record. Each batch is written as whole lines in one ``write`` and
  fsynced before the next, so a kill leaves at most a torn last line, which resuming drops.
* ``.parquet``: a folder of part files (``pandas.read_parquet`` and ``pyarrow`` read it whole).
  Each part is written under a hidden name, fsynced and renamed into place, so a part is there
  whole or not at all.

The settings that decide the records (model, top-k, preprocessing) are kept beside the output
(``results.jsonl.json``); resuming with other settings is refused, naming the difference.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, check_writable, deferred_signals, write_json
from ..errors import XrayError

FORMATS = (".jsonl", ".parquet")
SETTINGS_FORMAT = "resnet-xray classify records"
PART_ROWS = 4096  # records per Parquet part: fewer, larger files read faster; a kill redoes at most this many


@dataclass(frozen=True)
class Settings:
    """What decides a record's content; an output is resumed only with the same."""

    model: str  # the model's identity: what it is and a digest of its weights
    topk: int
    preprocessing: dict[str, Any]
    classes: int

    def to_dict(self) -> dict[str, Any]:
        return {"format": SETTINGS_FORMAT, "model": self.model, "topk": self.topk, "preprocessing": self.preprocessing,
                "classes": self.classes}

    def difference(self, saved: dict[str, Any]) -> str | None:
        """The first setting ``saved`` holds otherwise, in words; None when they agree."""
        if saved.get("model") != self.model:
            return f"was written by model {saved.get('model')}, not {self.model}"
        if saved.get("topk") != self.topk:
            return f"was written with --topk {saved.get('topk')}, not {self.topk}"
        if saved.get("preprocessing") != json.loads(json.dumps(self.preprocessing)):  # tuples read back as lists
            return f"was written with other preprocessing ({(saved.get('preprocessing') or {}).get('source')})"
        if saved.get("classes") != self.classes:
            return f"was written for {saved.get('classes')} classes, not {self.classes}"
        return None


def settings_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def topk_arrays(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The indices and probabilities (softmax in float64) of the ``k`` most probable classes per row, best first."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)
    top = np.argsort(-probs, axis=1, kind="stable")[:, : min(k, probs.shape[1])]
    return top, np.take_along_axis(probs, top, axis=1)


def labelled(index: np.ndarray, prob: np.ndarray, class_names: list[str]) -> list[list[dict[str, Any]]]:
    """Rows of :func:`topk_arrays` as the records' ``topk`` lists."""
    return [[{"label": class_names[j], "index": int(j), "prob": float(p)} for j, p in zip(idx, ps)] for idx, ps in zip(index, prob)]


def topk_lists(logits: np.ndarray, class_names: list[str], k: int) -> list[list[dict[str, Any]]]:
    """The ``k`` most probable labels per row of ``logits``, most probable first."""
    return labelled(*topk_arrays(logits, k), class_names)


def record(path: str, model: str, topk: list[dict[str, Any]] | None = None, error: str | None = None) -> dict[str, Any]:
    return {"path": path, "topk": topk or [], "error": error, "model": model}


class JsonlRecords:
    """Whole-line appends to a ``.jsonl`` file."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def done(self) -> Iterator[str]:
        """The paths already recorded; a torn last line (a killed write) is cut off the file first."""
        if not self.path.exists():
            return
        keep = 0
        with open(self.path, "rb+") as f:
            for n, line in enumerate(iter(f.readline, b""), 1):
                rec = _parse(line) if line.endswith(b"\n") else None
                if rec is None:
                    if f.read(1):  # not the last line: the file was changed by something else
                        raise XrayError(f"--out {self.path}: line {n} is not a record; pass --overwrite to start again")
                    break
                keep += len(line)
                yield rec["path"]
            f.truncate(keep)

    def append(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        if self.fd is None:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        blob = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records).encode("utf-8")
        with deferred_signals():  # Ctrl-C lands between batches, never inside one
            view = memoryview(blob)
            while view:
                view = view[os.write(self.fd, view):]
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("path"), str) else None


class ParquetRecords:
    """Part files in a ``.parquet`` folder, each renamed into place whole."""

    def __init__(self, path: Path):
        self.path = path
        self.pending: list[dict[str, Any]] = []
        self.run = uuid.uuid4().hex[:8]  # part names of one run never collide with a resumed run's
        self.parts = 0

    def done(self) -> Iterator[str]:
        import pyarrow.parquet as pq

        if not self.path.is_dir():
            return
        for p in sorted(self.path.iterdir()):
            if p.name.startswith(".") and ".tmp-" in p.name:
                p.unlink(missing_ok=True)  # a killed run's unfinished part (this folder is locked: no live writer)
            elif p.suffix == ".parquet":
                try:
                    paths = pq.read_table(p, columns=["path"]).column("path").to_pylist()
                except Exception:  # noqa: BLE001 - a part that cannot be read is redone
                    p.unlink()
                    continue
                yield from paths

    def append(self, records: list[dict[str, Any]]) -> None:
        self.pending.extend(records)
        if len(self.pending) >= PART_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(self.pending, schema=_schema())
        self.path.mkdir(parents=True, exist_ok=True)
        with deferred_signals(), atomic_path(self.path / f"part-{self.run}-{self.parts:05d}.parquet", "--out") as tmp:
            pq.write_table(table, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        self.parts += 1
        self.pending = []

    def close(self) -> None:
        self.flush()

    def remove(self) -> None:
        if not self.path.is_dir():
            return
        for p in self.path.iterdir():
            if p.suffix == ".parquet" or (p.name.startswith(".") and ".tmp-" in p.name):
                p.unlink()
        if any(self.path.iterdir()):
            raise XrayError(f"--out {self.path}: holds files classify did not write; choose another name")
        self.path.rmdir()


def _schema():
    import pyarrow as pa

    label = pa.struct([("label", pa.string()), ("index", pa.int32()), ("prob", pa.float64())])
    return pa.schema([("path", pa.string()), ("topk", pa.list_(label)), ("error", pa.string()), ("model", pa.string())])


def check_out(out: str | os.PathLike) -> Path:
    """Refuse an output name of neither format, before any work."""
    path = Path(out)
    if path.suffix.lower() not in FORMATS:
        raise XrayError(f"--out {path}: choose a .jsonl or .parquet name")
    return path


def open_records(out: str | os.PathLike, settings: Settings, *, overwrite: bool = False) -> tuple[Any, set[str]]:
    """The output's writer and the paths it already holds; refuses one written with other settings.

    Call it holding the output's lock. ``overwrite`` removes an earlier output (records and settings) first.
    """
    path = check_out(out)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        check_writable(path, "--out", suffixes=FORMATS)
    elif path.exists() and not path.is_dir():
        raise XrayError(f"--out {path}: exists and is not a Parquet folder")
    writer = JsonlRecords(path) if suffix == ".jsonl" else ParquetRecords(path)
    side = settings_path(path)
    if overwrite:
        writer.remove()
        side.unlink(missing_ok=True)
    done = set(writer.done())
    if side.exists():
        _check_settings(path, side, settings)
    elif done:
        raise XrayError(f"--out {path}: holds records but not their settings ({side.name}); pass --overwrite to start again")
    write_json(side, settings.to_dict(), "--out")
    return writer, done


def discard_empty(out: Path) -> None:
    """Remove an output that holds no record, and its settings (a run that found nothing to classify)."""
    if out.is_dir():
        if not any(out.iterdir()):
            out.rmdir()
    elif out.exists() and out.stat().st_size == 0:
        out.unlink()
    settings_path(out).unlink(missing_ok=True)


def _check_settings(path: Path, side: Path, settings: Settings) -> None:
    try:
        saved = json.loads(side.read_text())
        if saved.get("format") != SETTINGS_FORMAT:
            raise ValueError
    except (OSError, ValueError, AttributeError):
        raise XrayError(f"--out {path}: {side.name} is not classify's settings file; choose another name") from None
    diff = settings.difference(saved)
    if diff:
        raise XrayError(f"--out {path}: {diff}; resume with the same model and settings, or pass --overwrite to start again")


def read_records(out: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every whole record in ``out`` (a ``.jsonl`` file or a ``.parquet`` folder), streamed."""
    path = Path(out)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        for part in sorted(path.glob("*.parquet")):
            yield from pq.read_table(part).to_pylist()
        return
    with open(path, "rb") as f:
        for line in f:
            rec = _parse(line) if line.endswith(b"\n") else None
            if rec is not None:
                yield rec
