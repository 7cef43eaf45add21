"""Writing files so that a failed or killed run never leaves a half-written one behind.

Every artefact (checkpoint, ONNX model, figure, JSON, CSV) is written to a temp file in
the same folder and renamed into place; a rename within a folder is atomic.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import XrayError


def temp_path(path: Path) -> Path:
    """The hidden temp name beside ``path`` (``.best.tmp-<pid>.pt`` for ``best.pt``)."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def stale_temporaries(folder: Path, suffix: str = "") -> list[Path]:
    """Temp files that a killed writer left in ``folder``, optionally by suffix.

    A temp file whose writer (the pid in its name) is still running is never stale: deleting
    it would break that run's next rename.
    """
    from .locks import pid_alive

    stale = []
    for p in sorted(Path(folder).glob(f".*.tmp-*{suffix}")):
        pid = p.name.rsplit(".tmp-", 1)[-1].split(".", 1)[0]
        if not (pid.isdigit() and pid_alive(int(pid)) and int(pid) != os.getpid()):
            stale.append(p)
    return stale


@contextmanager
def atomic_path(path: str | os.PathLike, flag: str | None = None, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it to ``path`` if the block succeeds.

    The temp name keeps the suffix, so writers that choose a format by it (matplotlib,
    PIL) still work. Any failure removes the temp file; an ``OSError`` becomes one-line
    :class:`XrayError` naming ``flag`` and the file.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        where = f"{flag} {path}" if flag else str(path)
        raise XrayError(f"{where}: cannot write ({e.strerror or e})") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes, flag: str | None = None, fsync: bool = False) -> Path:
    with atomic_path(path, flag, fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, flag: str | None = None) -> Path:
    return write_bytes(path, text.encode("utf-8"), flag)


def jsonable(obj: Any) -> Any:
    """``obj`` with NaN/Inf as None, tuples as lists, paths and numpy scalars as plain values.

    ``json.dumps`` would write bare ``NaN``, which no strict JSON parser accepts.
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "to_dict"):
        return jsonable(obj.to_dict())
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # numpy / torch scalars
        return jsonable(obj.item())
    if hasattr(obj, "tolist"):
        return jsonable(obj.tolist())
    return str(obj)


def write_json(path: str | os.PathLike, obj: Any, flag: str | None = None, indent: int = 2) -> Path:
    return write_text(path, json.dumps(jsonable(obj), indent=indent, allow_nan=False) + "\n", flag)


def check_writable(path: str | os.PathLike, flag: str = "-o", *, kind: str = "file",
                   suffixes: tuple[str, ...] | None = None) -> Path:
    """Fail early, before minutes of work, when ``path`` cannot be written: the one such check.

    Args:
        path: a file to be written (``kind="file"``) or a folder to write into (``kind="dir"``).
        flag: how the user named it, for the one-line message.
        suffixes: for files, the accepted suffixes (lower case, ``""`` allows none).

    Returns:
        ``path``; its folder (or, for ``kind="dir"``, itself) now exists.
    """
    p = Path(path)
    if kind == "file":
        if suffixes is not None and p.suffix.lower() not in suffixes:
            first = next(s for s in suffixes if s)
            raise XrayError(f"{flag} {p}: written as {first.lstrip('.').upper()}; use a {first} name")
        if p.is_dir():
            raise XrayError(f"{flag} {p}: is a directory; give a file name")
        folder = p.parent if str(p.parent) else Path(".")
    elif kind == "dir":
        if p.exists() and not p.is_dir():
            raise XrayError(f"{flag} {p}: exists and is not a directory")
        folder = p
    else:
        raise ValueError(f"kind must be 'file' or 'dir', not {kind!r}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise XrayError(f"{flag} {p}: cannot create directory {folder} ({e.strerror or e})") from None
    if not folder.is_dir():
        raise XrayError(f"{flag} {p}: {folder} is not a directory")
    if kind == "file" and p.exists() and not os.access(p, os.W_OK):
        raise XrayError(f"{flag} {p}: not writable")
    # os.access says yes to root everywhere; only creating a file tells the truth (read-only mounts, /proc).
    probe = folder / f".probe-{os.getpid()}.tmp"
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise XrayError(f"{flag} {p}: cannot write in {folder} ({e.strerror or e})") from None
    return p


def writable_dir(path: str | os.PathLike, flag: str = "-o") -> Path:
    """Create folder ``path`` (and parents) and check that a file can be written in it."""
    return check_writable(path, flag, kind="dir")
