"""One-pass reductions for the trace: sum, sum of squares and non-zero count of a float32 array.

PyTorch reduces a tensor one statistic per pass, and a trace wants three or four of them for
every activation, so memory traffic, not arithmetic, decides its cost. These loops read each
element once and LLVM vectorises them (numba, ``fastmath`` reassociation only: NaN and inf keep
their IEEE meaning). Sums run in float32 inside blocks of 4096 elements and in float64
across blocks, as precise as PyTorch's own cascade sum. Per channel (a conv's output), the same
pass also finds each row's maximum and minimum, on integer order keys of the floats' bits (integer
reductions vectorise; float min/max do not, for their NaN rules). A residual block's add and the
ReLU after it are reduced from one read of the add's two terms (:func:`residual`).

With more than one thread each loop splits its blocks or rows over numba's OpenMP threads (a
libgomp pool of numba's own, beside PyTorch's); the serial loops run otherwise, or where numba cannot
use OpenMP here (its other layers contend with PyTorch's spinning threads: several times slower).

Without numba (or for a tensor that is not contiguous float32 on the CPU) the caller uses
PyTorch's reductions instead; the numbers agree to float rounding. The loops are compiled on
first use in a fresh checkout (~3 s) and cached beside the module (later processes: ~0.5 s).
"""

from __future__ import annotations

import os

import numpy as np
import torch

_kernels = None
_parallel: bool | None = None  # None: not tried yet


def _compile():
    global _kernels
    if _kernels is not None:
        return _kernels
    try:
        # A module of its own, imported only here: numba costs ~0.4 s to import, and its on-disk cache
        # keys module-level functions; closures built at run time would be compiled again in every process.
        import numba

        if "NUMBA_THREADING_LAYER" not in os.environ:
            numba.config.THREADING_LAYER = "omp"  # takes effect at numba's first parallel launch, if none came before
        from . import _numba_kernels as nk
    except Exception:  # noqa: BLE001 - any import failure means "use PyTorch"
        _kernels = False
        return _kernels
    _kernels = nk
    return _kernels


def enabled() -> bool:
    """Whether the one-pass kernels can run here (numba importable); imports them once (numba compiles on first call)."""
    return bool(_compile())


def threads(n: int) -> int:
    """Set the kernels' thread count for this thread (at most numba's pool size); return the count used.

    One thread, or a numba whose parallel loops cannot run on OpenMP, means the serial loops.
    """
    global _parallel
    nk = _compile()
    if not nk or n <= 1:
        return 1
    import numba

    if _parallel is None:
        try:  # the first parallel launch starts numba's threading layer: it must be OpenMP
            nk.flat_par(np.zeros(1, np.float32), np.zeros(3))
            _parallel = numba.threading_layer() == "omp"
        except Exception:  # noqa: BLE001 - no OpenMP runtime for numba: serial loops
            _parallel = False
    if not _parallel:
        return 1
    n = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    return n


def flat_stats(t: torch.Tensor, out: np.ndarray, parallel: bool = False) -> None:
    """Write [sum, sum of squares, non-zero count] of contiguous float32 CPU ``t`` into ``out`` (float64, 3)."""
    nk = _compile()
    (nk.flat_par if parallel else nk.flat)(t.reshape(-1).numpy(), out)


def row_extremes(t: torch.Tensor, parallel: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-row sum, sum of squares (float64), max and min (float32) of a contiguous float32 CPU matrix ``t``.

    Max and min are exact for rows without a NaN; a row with one has a NaN sum, and its extremes must be read elsewhere.
    """
    nk = _compile()
    sums = np.empty((t.shape[0], 2))
    bits = np.empty((t.shape[0], 2), np.int32)
    (nk.rows_extremes_par if parallel else nk.rows_extremes)(t.numpy(), sums, bits)
    ext = bits.view(np.float32)
    return sums[:, 0], sums[:, 1], ext[:, 0], ext[:, 1]


def residual(f: torch.Tensor, s: torch.Tensor, parallel: bool = False) -> tuple[np.ndarray, float, float]:
    """A block's ``y = f + s`` and ``relu(y)`` from one read of contiguous float32 CPU ``f`` and ``s`` (same size).

    Returns ([sum y, sum y^2, f.s, sum relu(y), sum relu(y)^2, count y > 0] in float64, max y, min y).
    ``y`` is the float32 sum PyTorch's add computes, bit for bit, so max and min are exact unless ``y``
    holds a NaN (then the sum is NaN, and the extremes must be read elsewhere).
    """
    nk = _compile()
    out = np.empty(6)
    bits = np.empty(2, np.int32)
    (nk.residual_par if parallel else nk.residual)(f.reshape(-1).numpy(), s.reshape(-1).numpy(), out, bits)
    hi, lo = bits.view(np.float32).tolist()
    return out, hi, lo
