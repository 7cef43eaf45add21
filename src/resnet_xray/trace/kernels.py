"""One-pass reductions for the trace: sum, sum of squares and non-zero count of a float32 array.

PyTorch reduces a tensor one statistic per pass, and a trace wants three or four of them for
every activation, so memory traffic, not arithmetic, decides its cost. These loops read each
element once and LLVM vectorises them (numba, ``fastmath`` reassociation only: NaN and inf keep
their IEEE meaning). Sums run in float32 inside blocks of 4096 elements and in float64
across blocks, as precise as PyTorch's own cascade sum. Per channel (a conv's output), the same
pass also finds each row's maximum and minimum, on integer order keys of the floats' bits (integer
reductions vectorise; float min/max do not, for their NaN rules). For whole tensors min and max stay
with PyTorch, whose `aminmax` runs on every thread.

Without numba (or for a tensor that is not contiguous float32 on the CPU) the caller uses
PyTorch's reductions instead; the numbers agree to float rounding. The loops are compiled on
first use in a fresh checkout (~2 s) and cached beside the module (later processes: ~0.3 s).
"""

from __future__ import annotations

import numpy as np
import torch

_kernels = None


def _compile():
    global _kernels
    if _kernels is not None:
        return _kernels
    try:
        # A module of its own, imported only here: numba costs ~0.4 s to import, and its on-disk cache
        # keys module-level functions; closures built at run time would be compiled again in every process.
        from . import _numba_kernels as nk
    except Exception:  # noqa: BLE001 - any import failure means "use PyTorch"
        _kernels = False
        return _kernels
    _kernels = (nk.flat, nk.rows_extremes)
    return _kernels


def enabled() -> bool:
    """Whether the one-pass kernels can run here (numba importable); imports them once (numba compiles on first call)."""
    return bool(_compile())


def flat_stats(t: torch.Tensor, out: np.ndarray) -> None:
    """Write [sum, sum of squares, non-zero count] of contiguous float32 CPU ``t`` into ``out`` (float64, 3)."""
    _compile()[0](t.reshape(-1).numpy(), out)


def row_extremes(t: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-row sum, sum of squares (float64), max and min (float32) of a contiguous float32 CPU matrix ``t``.

    Max and min are exact for rows without a NaN; a row with one has a NaN sum, and its extremes must be read elsewhere.
    """
    sums = np.empty((t.shape[0], 2))
    bits = np.empty((t.shape[0], 2), np.int32)
    _compile()[1](t.numpy(), sums, bits)
    ext = bits.view(np.float32)
    return sums[:, 0], sums[:, 1], ext[:, 0], ext[:, 1]
