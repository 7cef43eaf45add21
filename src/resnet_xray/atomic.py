"""Writing files so that a failed or killed run never leaves a half-written one behind.

Every artefact (checkpoint, ONNX model, figure, JSON, CSV) is written to a temp file in
the same folder and renamed into place; a rename within a folder is atomic.
"""

from __future__ import annotations

import json
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
    """Temp files that a killed writer left in ``folder`` (any process's), optionally by suffix."""
    return sorted(Path(folder).glob(f".*.tmp-*{suffix}"))


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


def write_json(path: str | os.PathLike, obj: Any, flag: str | None = None, indent: int = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, default=str) + "\n", flag)
