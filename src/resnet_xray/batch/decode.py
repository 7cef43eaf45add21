"""Read and preprocess batches of paths, inline or in worker processes, in order and with bounded memory.

Each batch of paths becomes one :class:`Decoded`: the NCHW float32 array of the readable images
and the reason for each unreadable one. With workers, at most ``2 x workers`` batches are in
flight, so a collection of any size holds the same few batches in memory.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import signal
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import XrayError
from ..image import Preprocessing, load_image

_transforms: dict[Preprocessing, Any] = {}  # one composed transform per pipeline, per process


@dataclass
class Decoded:
    paths: list[str]  # the readable images, in the order of ``x``
    x: np.ndarray  # float32 [len(paths), 3, crop, crop]
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, why it was not read)


def decode_batch(items: list[tuple[str, str | None]], pre: Preprocessing) -> Decoded:
    """Read and preprocess ``(path, known error)`` pairs; an unreadable file becomes an error, never an exception."""
    transform = _transforms.get(pre)
    if transform is None:
        transform = _transforms[pre] = pre.transform()
    paths: list[str] = []
    arrays: list[np.ndarray] = []
    errors: list[tuple[str, str]] = []
    for path, known in items:
        if known:
            errors.append((path, known))
            continue
        try:
            arrays.append(transform(load_image(path)).numpy())
            paths.append(path)
        except XrayError as e:
            errors.append((path, str(e).split(": ", 1)[-1]))
        except Exception as e:  # noqa: BLE001 - a file that breaks a decoder must not stop the job
            errors.append((path, f"cannot decode image ({type(e).__name__}: {str(e)[:120]})"))
    x = np.stack(arrays) if arrays else np.zeros((0, 3, pre.crop, pre.crop), np.float32)
    return Decoded(paths, x, errors)


def _worker_init() -> None:
    """Workers ignore Ctrl-C (the parent stops them), die with the parent, and keep to one thread each."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        # PR_SET_PDEATHSIG: a parent killed outright takes its workers with it, so none is left holding the output's lock
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    import torch

    torch.set_num_threads(1)  # as torch's DataLoader workers: N processes, not N x cores threads


def decoded_batches(batches: Iterable[list[tuple[str, str | None]]], pre: Preprocessing, workers: int) -> Iterator[Decoded]:
    """:func:`decode_batch` over ``batches``, in order; ``workers`` processes read ahead (0: inline)."""
    if workers <= 0:
        for b in batches:
            yield decode_batch(b, pre)
        return
    # fork: workers start at once and share the parent's loaded modules; they touch no engine state
    pool = mp.get_context("fork").Pool(workers, initializer=_worker_init)
    try:
        inflight: deque = deque()
        for b in batches:
            inflight.append(pool.apply_async(decode_batch, (b, pre)))
            if len(inflight) >= 2 * workers:
                yield inflight.popleft().get()
        while inflight:
            yield inflight.popleft().get()
    finally:
        pool.terminate()
        pool.join()
