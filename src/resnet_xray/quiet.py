"""Third-party libraries' own chatter, kept out of the user's terminal unless ``--verbose`` asks for it.

ONNX Runtime's calibrators ``print`` their histogram settings ("Number of histogram bins",
"Percentile : ..."); torch logs "No CUDA runtime is found" when a library imports
``torch.utils.cpp_extension`` on a machine with a CUDA toolkit but no GPU. Neither tells a
user anything. ``--verbose`` sets :data:`VERBOSE_ENV`, so library code sees it too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator

VERBOSE_ENV = "RESNET_XRAY_VERBOSE"

# (logger, start of the message) pairs that are dropped unless verbose.
KNOWN_LOG_NOISE = (
    ("torch.utils.cpp_extension", "No CUDA runtime is found"),
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextlib.contextmanager
def verbose_mode(on: bool = True) -> Iterator[None]:
    """Show third-party output inside the block when ``on``; the environment is restored after it."""
    old = os.environ.get(VERBOSE_ENV)
    if on:
        os.environ[VERBOSE_ENV] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(VERBOSE_ENV, None)
        else:
            os.environ[VERBOSE_ENV] = old


class _DropNoise(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return verbose() or not str(record.msg).startswith(self.start)


def hide_known_log_noise() -> None:
    """Drop the log lines in :data:`KNOWN_LOG_NOISE` (once per process; the loggers need not exist yet)."""
    for name, start in KNOWN_LOG_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) and f.start == start for f in logger.filters):
            logger.addFilter(_DropNoise(start))


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None  # pytest's capture, a StringIO: nothing below Python to divert


@contextlib.contextmanager
def stdout_silenced() -> Iterator[None]:
    """Discard what the code inside writes to stdout, from Python and from C, unless verbose.

    Only stdout: our own progress bars run inside such calls (the calibration reader) and
    write to stderr. With ``--verbose`` the output goes to stderr, so stdout keeps results only.
    """
    if verbose():
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    sys.stdout.flush()
    fd = _fileno(sys.stdout)
    saved = os.dup(fd) if fd is not None else None
    try:
        with open(os.devnull, "w") as null:
            if saved is not None:
                os.dup2(null.fileno(), fd)
            with contextlib.redirect_stdout(null):
                yield
    finally:
        if saved is not None:
            os.dup2(saved, fd)
            os.close(saved)
