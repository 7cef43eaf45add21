"""Progress for long jobs: a tqdm bar on a terminal, a plain line per stage (or every few seconds) in a log.

Usage::

    with progress("report", total=12, quiet=opts.quiet) as p:
        p.stage("trace")       # names what runs now and counts one step
        ...
    with progress("make-dataset", total=n_images) as p:
        p.stage("train/circle", steps=0)
        p.advance()            # one image

Nothing is shown for a job that ends within ``delay`` seconds. On a non-terminal
(a CI log, ``2> file``) tqdm's carriage-return updates would pile up as hundreds
of partial lines, so there each stage prints one line, and plain :meth:`Progress.advance`
calls print at most one line every ``every`` seconds.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

DELAY_S = 3.0  # jobs shorter than this show nothing
EVERY_S = 5.0  # at most one line this often on a non-terminal, except at stage changes


class Progress:
    """One job's progress; made by :func:`progress`."""

    def __init__(self, desc: str, total: int | None, stream: TextIO, quiet: bool, delay: float, every: float):
        self.desc, self.total, self.stream = desc, total, stream
        self.done = 0
        self.current = ""
        self._t0 = time.monotonic()
        self._last_line = -float("inf")
        self._delay, self._every = delay, every
        self._bar = None
        self._quiet = quiet
        self._tty = not quiet and _isatty(stream)
        if self._tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, file=stream, delay=delay, leave=False, dynamic_ncols=True,
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]{postfix}"
                             if total else "{desc}: {n_fmt} [{elapsed}]{postfix}")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def stage(self, name: str, steps: int = 1) -> None:
        """Start the stage ``name``; it counts ``steps`` of ``total`` (0 for a stage whose items :meth:`advance` counts)."""
        self._step(steps, name, force=True)

    def advance(self, n: int = 1) -> None:
        """Count ``n`` steps within the current stage."""
        self._step(n, None, force=False)

    def _step(self, n: int, name: str | None, force: bool) -> None:
        self.done += n
        if name is not None:
            self.current = name
        if self._quiet:
            return
        if self._bar is not None:
            if name is not None:
                self._bar.set_postfix_str(name, refresh=False)
            self._bar.update(n)
            return
        now = self.elapsed
        if now < self._delay or (not force and now - self._last_line < self._every):
            return
        self._last_line = now
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        self.stream.write(f"{self.desc}: {count} {self.current} ({now:.0f} s)\n".replace("  (", " ("))
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif not self._quiet and self.elapsed >= self._delay:
            self.stream.write(f"{self.desc}: done in {self.elapsed:.1f} s\n")
            self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def progress(desc: str, total: int | None = None, *, quiet: bool = False, stream: TextIO | None = None,
             delay: float = DELAY_S, every: float = EVERY_S) -> Iterator[Progress]:
    """Show the progress of one job on ``stream`` (default: stderr) until the block ends.

    Args:
        desc: what the job is, e.g. ``"report"``.
        total: steps expected (stages plus advances), or ``None`` when unknown.
        quiet: show nothing.
        stream: where to write; a terminal gets a tqdm bar, anything else plain lines.
        delay: show nothing for a job that ends sooner than this many seconds.
        every: on a non-terminal, at most one line this often (stage changes always print).
    """
    p = Progress(desc, total, stream if stream is not None else sys.stderr, quiet, delay, every)
    try:
        yield p
    finally:
        p.close()
