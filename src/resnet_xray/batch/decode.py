"""Read and preprocess batches of paths, inline or in worker processes, in order and with bounded memory.

Each batch of paths becomes one :class:`Decoded`: the NCHW float32 array of the readable images
(or, with ``pixels``, their NHWC uint8 crops, for an engine that normalises them itself) and
the reason for each unreadable one. With workers, at most ``2 x workers`` batches are in
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

_transforms: dict[tuple[Preprocessing, bool], Any] = {}  # one composed transform per pipeline and output, per process


@dataclass
class Decoded:
    paths: list[str]  # the readable images, in the order of ``x``
    x: np.ndarray  # float32 [len(paths), 3, crop, crop], or uint8 [len(paths), crop, crop, 3] with pixels
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, why it was not read)


def _to_array(pre: Preprocessing, pixels: bool) -> Any:
    """One image to its array: the normalised CHW float32 tensor, or with ``pixels`` the HWC uint8 crop (a quarter of the bytes)."""
    if pixels:
        crop = pre.crop_transform()
        return lambda img: np.asarray(crop(img), dtype=np.uint8)
    full = pre.transform()
    return lambda img: full(img).numpy()


def decode_batch(items: list[tuple[str, str | None]], pre: Preprocessing, pixels: bool = False) -> Decoded:
    """Read and preprocess ``(path, known error)`` pairs; an unreadable file becomes an error, never an exception.

    ``pixels``: stop at the crop, as uint8 NHWC, for an engine that converts and normalises inside its graph.
    """
    transform = _transforms.get((pre, pixels))
    if transform is None:
        transform = _transforms[(pre, pixels)] = _to_array(pre, pixels)
    paths: list[str] = []
    arrays: list[np.ndarray] = []
    errors: list[tuple[str, str]] = []
    for path, known in items:
        if known:
            errors.append((path, known))
            continue
        try:
            arrays.append(transform(load_image(path)))
            paths.append(path)
        except XrayError as e:
            errors.append((path, str(e).split(": ", 1)[-1]))
        except Exception as e:  # noqa: BLE001 - a file that breaks a decoder must not stop the job
            errors.append((path, f"cannot decode image ({type(e).__name__}: {str(e)[:120]})"))
    empty = np.zeros((0, pre.crop, pre.crop, 3), np.uint8) if pixels else np.zeros((0, 3, pre.crop, pre.crop), np.float32)
    x = np.stack(arrays) if arrays else empty
    return Decoded(paths, x, errors)


def _worker_init() -> None:
    """Workers ignore Ctrl-C (the parent stops them), die with the parent, and keep to one thread each."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        # PR_SET_PDEATHSIG: a parent killed outright takes its workers with it, so none is left holding the output's lock
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    import torch

    torch.set_num_threads(1)  # as torch's DataLoader workers: N processes, not N x cores threads


def decoded_batches(batches: Iterable[list[tuple[str, str | None]]], pre: Preprocessing, workers: int,
                    pixels: bool = False) -> Iterator[Decoded]:
    """:func:`decode_batch` over ``batches``, in order; ``workers`` processes read ahead (0: inline)."""
    if workers <= 0:
        for b in batches:
            yield decode_batch(b, pre, pixels)
        return
    # fork: workers start at once and share the parent's loaded modules; they touch no engine state
    pool = mp.get_context("fork").Pool(workers, initializer=_worker_init)
    try:
        inflight: deque = deque()
        for b in batches:
            inflight.append(pool.apply_async(decode_batch, (b, pre, pixels)))
            if len(inflight) >= 2 * workers:
                yield inflight.popleft().get()
        while inflight:
            yield inflight.popleft().get()
    finally:
        pool.terminate()
        pool.join()
