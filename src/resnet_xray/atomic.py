"""Writing files so that a failed or killed run never leaves a half-written one behind.

Every artefact (checkpoint, ONNX model, figure, JSON, CSV) is written to a temp file in
the same folder and renamed into place; a rename within a folder is atomic.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import XrayError


def temp_path(path: Path) -> Path:
    """The hidden temp name beside ``path`` (``.best.tmp-<pid>.pt`` for ``best.pt``)."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


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


def stale_temporaries(folder: Path, suffix: str = "") -> list[Path]:
    """Temp files that a killed writer left in ``folder``, optionally by suffix.

    A temp file whose writer (the pid in its name) is still running is never stale: deleting
    it would break that run's next rename.
    """
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
        if suffixes is not None:
            check_suffix(p, flag, suffixes)
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


def check_suffix(path: str | os.PathLike, flag: str, suffixes: tuple[str, ...]) -> Path:
    """Refuse a file name whose suffix is not one of ``suffixes`` (lower case; ``""`` allows none), touching nothing."""
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        first = next(s for s in suffixes if s)
        raise XrayError(f"{flag} {p}: written as {first.lstrip('.').upper()}; use a {first} name")
    return p


def remove_stale_dirs(folder: str | os.PathLike, prefix: str) -> list[Path]:
    """Remove the work folders ``<prefix><pid>-*`` in ``folder`` whose process is gone (killed runs); returns them.

    A folder whose process still runs is left alone, as are names without a pid.
    """
    gone = []
    for p in sorted(Path(folder).glob(f"{prefix}*-*")):
        pid = p.name[len(prefix):].split("-", 1)[0]
        if p.is_dir() and not p.is_symlink() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


def writable_dir(path: str | os.PathLike, flag: str = "-o") -> Path:
    """Create folder ``path`` (and parents) and check that a file can be written in it."""
    return check_writable(path, flag, kind="dir")


# --- what an output may replace ---


def refuse_inputs(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], flag: str = "-o") -> None:
    """Refuse an output that is, contains or lies inside one of the command's inputs.

    ``inputs`` maps each input's flag to its path (None or a missing path: skipped). Paths are
    compared resolved, so a symlink or ``..`` spelling of an input is caught too.
    """
    o = Path(out).resolve()
    for name, p in inputs.items():
        if p is None or not Path(p).exists():
            continue
        i = Path(p).resolve()
        if o == i:
            how = "is"
        elif i in o.parents:
            how = "lies inside"
        elif o in i.parents:
            how = "contains"
        else:
            continue
        raise XrayError(f"{flag} {out}: {how} the input {name} {p}; choose another {'file' if o.suffix else 'folder'}")


def earlier_output(folder: str | os.PathLike, flag: str | None, *, command: str, marker: str, resume: bool | None = False,
                   overwrite: bool = False) -> bool:
    """Whether ``folder`` holds an earlier ``command`` run that may be resumed or replaced.

    A missing or empty folder: False. A non-empty folder without ``marker`` (the command's own
    state file) was not written by ``command``: refused whatever the flags, and the message does
    not offer ``--overwrite``, which must never delete what a person or another command put there.
    With the marker, ``resume`` or ``overwrite`` lets it through (True); otherwise it is refused
    with the hints (``resume=None``: the command cannot resume, so only ``--overwrite``).
    """
    f = Path(folder)
    where = f"{flag} {f}" if flag else str(f)
    if not f.is_dir() or not any(f.iterdir()):
        return False
    if not (f / marker).is_file():
        raise XrayError(f"{where}: is not empty and was not written by {command} (no {marker}); choose another folder")
    if not (resume or overwrite):
        hint = "pass --overwrite to replace it" if resume is None else "pass --resume to continue it or --overwrite to replace it"
        raise XrayError(f"{where}: holds an earlier {command} output; {hint}")
    return True


# --- folders a failed command made, and files replaced as a set ---


@contextmanager
def removed_if_failed(path: str | os.PathLike) -> Iterator[Path]:
    """Remove the folders on the way to ``path`` (itself included) that did not exist, if the block fails and they are empty.

    A command that fails must not leave a half-made output folder behind; one that held files
    already (a resumable run's checkpoints) is left alone.
    """
    path = Path(path)
    made = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        yield path
    except BaseException:
        for p in made:
            try:
                p.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                break  # not empty (or not a folder): the ones above it are not empty either
        raise


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for this thread until the block ends, so a few renames are not cut in half.

    Best effort: a signal another thread (an ONNX Runtime or OpenMP worker) takes still lands,
    so :meth:`StagedFiles.commit` rolls back on an interrupt and its next user recovers after a kill.
    """
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, OSError, ValueError):  # no pthread_sigmask (Windows): renames stay unguarded
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a signal that came meanwhile is delivered now


class StagedFiles:
    """A set of files (a model and its sidecars) built under temporary names, then swapped in whole.

    The new files are written into a hidden staging folder beside the targets, under their final
    names, and checked there. :meth:`commit` moves every old target into a backup folder, the new
    files into place, and drops the backup; a target the new set does not have is removed, so no
    stale piece of the old set stays beside the new one. A failure or Ctrl-C during the swap rolls
    back to the old set. A run killed outright (SIGKILL) mid-swap leaves its backup folder, and the
    next :class:`StagedFiles` on the same targets puts the old set back first. Without a commit the
    old set is untouched. Use it while holding the targets' lock.
    """

    MOVING_IN = ".moving-in"  # in the backup folder once every old file is in it

    def __init__(self, targets: list[Path], flag: str | None = "-o"):
        self.targets = [Path(t) for t in targets]
        self.folder, self.flag = self.targets[0].parent, flag
        self.stage = self._name("stage", os.getpid())

    def _name(self, kind: str, pid: int | str) -> Path:
        return self.folder / f".{self.targets[0].name}.{kind}-{pid}"

    def path(self, target: str | os.PathLike) -> Path:
        """Where the new version of ``target`` is written before the swap."""
        return self.stage / Path(target).name

    def __enter__(self) -> StagedFiles:
        self.recover()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.stage.mkdir()
        except OSError as e:
            raise XrayError(f"{self._where()}: cannot write in {self.folder} ({e.strerror or e})") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)

    def _where(self) -> str:
        return f"{self.flag} {self.targets[0]}" if self.flag else str(self.targets[0])

    def recover(self) -> None:
        """Finish or undo what a killed run left: stale staging folders go; an interrupted swap is rolled back."""
        prefix = f".{self.targets[0].name}."
        for p in sorted(self.folder.glob(f"{prefix}*-*")):
            kind, _, pid = p.name[len(prefix):].rpartition("-")
            if kind not in ("stage", "old", "done") or not pid.isdigit() or (pid_alive(int(pid)) and int(pid) != os.getpid()):
                continue
            if kind == "old":  # the swap did not finish: the old set comes back whole
                moving_in = (p / self.MOVING_IN).exists()
                for t in self.targets:
                    if (p / t.name).exists():
                        os.replace(p / t.name, t)
                    elif moving_in:
                        t.unlink(missing_ok=True)  # had no old version: what is there came from that run's stage
            shutil.rmtree(p, ignore_errors=True)

    def commit(self) -> list[Path]:
        """Swap the staged files in for the targets; returns the targets now in place."""
        backup = self._name("old", os.getpid())
        moved_old: list[Path] = []
        moved_new: list[Path] = []
        try:
            with deferred_signals():
                try:
                    backup.mkdir()
                    for t in self.targets:
                        if t.exists() or t.is_symlink():
                            os.replace(t, backup / t.name)
                            moved_old.append(t)
                    (backup / self.MOVING_IN).touch()  # from here on, a target with no old copy is a new file
                    for t in self.targets:
                        if self.path(t).exists():
                            os.replace(self.path(t), t)
                            moved_new.append(t)
                    # renamed before it is emptied: a run killed while deleting it leaves nothing to roll back
                    done = self._name("done", os.getpid())
                    os.replace(backup, done)
                except BaseException:
                    for t in moved_new:
                        os.replace(t, self.path(t))
                    for t in moved_old:
                        os.replace(backup / t.name, t)
                    shutil.rmtree(backup, ignore_errors=True)
                    raise
        except OSError as e:
            raise XrayError(f"{self._where()}: cannot replace ({e.strerror or e}); the earlier files are unchanged") from None
        shutil.rmtree(done, ignore_errors=True)
        return moved_new
