"""One writer per output folder: an exclusive, crash-safe lock every folder-writing command takes.

Two runs with the same ``--out`` used to delete each other's temp files and leave a folder
mixing one run's ``best.pt`` with another's ``last.pt``. :func:`output_lock` makes the second
writer stop at once with one line (exit 2). The lock is an OS file lock (``flock`` via
``filelock``), so a killed run releases it with its process; no stale lock survives a crash.
The lock file is removed when the lock is released, and a command that fails removes the
output folder it had only just made, so no run leaves a stray ``.resnet-xray.lock`` behind.

Usage (any command that writes a folder)::

    with output_lock(out_dir, "--out"):
        ...  # write into out_dir
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .atomic import removed_if_failed
from .errors import XrayError

LOCK_NAME = ".resnet-xray.lock"
OWNER_NAME = ".resnet-xray.lock.json"  # who holds it, for the second writer's message


def lock_paths(folder: str | os.PathLike, *, beside: bool = False) -> tuple[Path, Path]:
    """The lock file and its owner note: inside ``folder``, or next to it when ``beside``.

    ``beside`` is for writers that build a folder elsewhere and swap it into place
    (make-dataset): a lock file inside would be swapped away with the old folder.
    """
    folder = Path(folder)
    if beside:
        return (folder.parent / f".{folder.name}{LOCK_NAME}", folder.parent / f".{folder.name}{OWNER_NAME}")
    return folder / LOCK_NAME, folder / OWNER_NAME


def _owner_text(note: Path) -> str:
    try:
        o = json.loads(note.read_text())
        return f" (pid {o['pid']}, `{o['command']}`, since {o['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


@contextmanager
def output_lock(folder: str | os.PathLike, flag: str | None = "--out", *, beside: bool = False,
                shown: str | os.PathLike | None = None) -> Iterator[Path]:
    """Hold the exclusive lock on ``folder`` (created if missing) for the block; yield the folder.

    Raises:
        XrayError: another process holds it (one line naming the folder and the holder),
            or the folder cannot be created.

    Re-entrant within one process (the pruner fine-tunes into its own folder), so nested
    commands do not lock themselves out. When the block fails, the folders this call made
    are removed again if nothing was written in them. ``shown``: the name messages give
    (default: ``folder``).
    """
    folder = Path(folder)
    with removed_if_failed(folder):
        with _held(folder, flag, beside, Path(shown or folder)):
            yield folder


@contextmanager
def file_lock(path: str | os.PathLike, flag: str | None = "-o") -> Iterator[Path]:
    """The lock for a file output and the files written with it (``model.onnx``, ``model.xml``, ``.bin``, sidecars).

    Keyed on the name without its last suffix, beside it, so ``export -o m.onnx`` and
    ``quantize --engine openvino -o m.xml``, which both write ``m.xml``, exclude each other.
    """
    path = Path(path)
    with output_lock(path.with_suffix(""), flag, beside=True, shown=path):
        yield path


@contextmanager
def _held(folder: Path, flag: str | None, beside: bool, shown: Path) -> Iterator[None]:
    where = f"{flag} {shown}" if flag else str(shown)
    lock_file, note = lock_paths(folder, beside=beside)
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise XrayError(f"{where}: cannot create ({e.strerror})") from None
    # is_singleton: one lock object per path in this process, so nesting counts instead of deadlocking.
    # preserve_lock_file: filelock itself never unlinks; the holder does, below, while it still holds the lock.
    lock = FileLock(lock_file, timeout=0, is_singleton=True, preserve_lock_file=True)
    try:
        lock.acquire()
    except Timeout:
        raise XrayError(
            f"{where}: in use by another resnet-xray run{_owner_text(note)}; "
            f"wait for it to finish or choose another {'folder' if shown == folder else 'name'}"
        ) from None
    except OSError as e:
        raise XrayError(f"{where}: cannot lock ({e.strerror or e})") from None
    first = lock.lock_counter == 1
    try:
        if first:
            try:
                note.write_text(json.dumps({"pid": os.getpid(), "command": " ".join(["resnet-xray", *sys.argv[1:]])[:200],
                                            "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
            except OSError:
                pass  # the note only improves a message
        yield
    finally:
        if first:
            try:
                note.unlink(missing_ok=True)
                # Unlinked while still held: a process that opened the old file in the meantime gets
                # its flock on an unlinked inode once we let go, which filelock (4.x) sees (st_nlink 0)
                # and does not count as acquired, so it stops with "in use" rather than sharing the lock.
                # One that opens the name after the unlink creates a fresh file and locks that; by then
                # this process only releases, touching nothing in the folder.
                lock_file.unlink(missing_ok=True)
            except OSError:
                pass
        lock.release()
