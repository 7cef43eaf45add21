"""The paths a batch job classifies, streamed: folder trees, manifests and globs, never listed whole.

A folder is walked with ``os.scandir`` one directory at a time, a manifest is read line by line
and a glob is expanded by ``glob.iglob``, so memory does not grow with the collection. A path that
cannot be used (missing, a folder that cannot be listed) is yielded too, with the reason, so the
job records it as an error and goes on.
"""

from __future__ import annotations

import csv
import glob
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import XrayError
from ..image import IMAGE_EXTENSIONS

MANIFEST_COLUMN = "path"  # the CSV column a manifest's paths are read from (else its first column)


@dataclass(frozen=True)
class Item:
    """One input: a path to classify, or one that is already known to be unusable (``error``)."""

    path: str
    error: str | None = None


def walk(folder: str) -> Iterator[Item]:
    """Image files under ``folder``, depth first, one directory listed at a time.

    Symlinked folders are not followed (as ``os.walk``); FIFOs, sockets and dangling links are
    yielded so that reading them records why they were not classified.
    """
    stack = [folder]
    while stack:
        top = stack.pop()
        try:
            with os.scandir(top) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif _candidate(entry):
                        yield Item(entry.path)
        except OSError as e:
            yield Item(top, f"folder cannot be read ({e.strerror or e})")


def _candidate(entry: os.DirEntry) -> bool:
    try:
        st = entry.stat()
    except OSError:
        return True  # a dangling link or a loop: recorded as unreadable, never dropped in silence
    if stat.S_ISDIR(st.st_mode):
        return False  # a symlink to a folder
    return not stat.S_ISREG(st.st_mode) or os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS


def manifest_paths(manifest: str | os.PathLike) -> Iterator[Item]:
    """The paths a manifest lists: a ``.csv`` (its ``path`` column, else the first) or one path per line.

    Blank lines and ``#`` comments are skipped; a relative path is taken relative to the manifest's folder.
    """
    p = Path(manifest)
    if not p.is_file():
        raise XrayError(f"--manifest {p}: no such file")
    base = p.parent
    try:
        with open(p, newline="", encoding="utf-8") as f:
            lines = _csv_paths(f) if p.suffix.lower() == ".csv" else (line.strip() for line in f)
            for line in lines:
                if line and not line.startswith("#"):
                    yield Item(line if os.path.isabs(line) else os.path.join(base, line))
    except UnicodeDecodeError:
        raise XrayError(f"--manifest {p}: not a UTF-8 text or CSV file of paths") from None
    except OSError as e:
        raise XrayError(f"--manifest {p}: cannot read ({e.strerror or e})") from None


def _csv_paths(f: Iterable[str]) -> Iterator[str]:
    rows = csv.reader(f)
    header = next(rows, None)
    if header is None:
        return
    names = [h.strip().lower() for h in header]
    col = names.index(MANIFEST_COLUMN) if MANIFEST_COLUMN in names else 0
    if MANIFEST_COLUMN not in names and header:
        yield header[0].strip()  # no header row: the first row is a path too
    for row in rows:
        if len(row) > col:
            yield row[col].strip()


def iter_inputs(images: Iterable[str | os.PathLike], manifest: str | os.PathLike | None = None) -> Iterator[Item]:
    """Every input in order: each argument (file, folder or glob pattern), then the manifest's paths."""
    for arg in images:
        s = os.fspath(arg)
        if os.path.isdir(s):
            yield from walk(s)
        elif os.path.lexists(s) or not glob.has_magic(s):
            yield Item(s)  # a missing file is recorded as unreadable, as plain classify reports it
        else:
            yield from _globbed(s)
    if manifest is not None:
        yield from manifest_paths(manifest)


def _globbed(pattern: str) -> Iterator[Item]:
    for match in glob.iglob(pattern, recursive=True):
        if os.path.isdir(match):
            if "**" not in pattern:  # with **, iglob lists the files under it itself
                yield from walk(match)
        elif os.path.splitext(match)[1].lower() in IMAGE_EXTENSIONS:
            yield Item(match)


def count_inputs(images: Iterable[str | os.PathLike], manifest: str | os.PathLike | None = None) -> int:
    """How many inputs :func:`iter_inputs` yields, counted without keeping them (for the progress bar's ETA)."""
    return sum(1 for _ in iter_inputs(images, manifest))
