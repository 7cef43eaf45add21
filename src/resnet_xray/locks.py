"""One writer per output folder: an exclusive, crash-safe lock every folder-writing command takes.

Two runs with the same ``--out`` used to delete each other's temp files and leave a folder
mixing one run's ``best.pt`` with another's ``last.pt``. :func:`output_lock` makes the second
writer stop at once with one line (exit 2). The lock is an OS file lock (``flock`` via
``filelock``), so a killed run releases it with its process; no stale lock survives a crash.

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
def output_lock(folder: str | os.PathLike, flag: str | None = "--out", *, beside: bool = False) -> Iterator[Path]:
    """Hold the exclusive lock on ``folder`` (created if missing) for the block; yield the folder.

    Raises:
        XrayError: another process holds it (one line naming the folder and the holder),
            or the folder cannot be created.

    Re-entrant within one process (the pruner fine-tunes into its own folder), so nested
    commands do not lock themselves out.
    """
    folder = Path(folder)
    where = f"{flag} {folder}" if flag else str(folder)
    lock_file, note = lock_paths(folder, beside=beside)
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise XrayError(f"{where}: cannot create ({e.strerror})") from None
    # is_singleton: one lock object per path in this process, so nesting counts instead of deadlocking.
    # preserve_lock_file: unlinking on release races with a waiter that has just opened it.
    lock = FileLock(lock_file, timeout=0, is_singleton=True, preserve_lock_file=True)
    try:
        lock.acquire()
    except Timeout:
        raise XrayError(
            f"{where}: in use by another resnet-xray run{_owner_text(note)}; "
            f"wait for it to finish or choose another folder"
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
        yield folder
    finally:
        if first:
            try:
                note.unlink(missing_ok=True)
            except OSError:
                pass
        lock.release()


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (used to spare live runs' temp files)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
