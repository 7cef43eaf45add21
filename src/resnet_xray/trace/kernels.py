"""One-pass reductions for the trace: sum, sum of squares and non-zero count of a float32 array.

PyTorch reduces a tensor one statistic per pass, and a trace wants three or four of them for
every activation, so memory traffic, not arithmetic, decides its cost. These loops read each
element once and LLVM vectorises them (numba, ``fastmath`` reassociation only: NaN and inf keep
their IEEE meaning). Sums run in float32 inside blocks of ``BLOCK`` elements and in float64
across blocks, as precise as PyTorch's own cascade sum. Minimum and maximum stay with PyTorch:
numba does not vectorise them.

Without numba (or for tensors that are not contiguous float32 on the CPU) :func:`available`
is False for that tensor and the caller uses PyTorch's reductions; the numbers agree to float rounding.
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK = 4096
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}  # not nnan/ninf: a NaN activation must still show up as NaN

_kernels = None


def _compile():
    global _kernels
    if _kernels is not None:
        return _kernels
    try:
        from numba import njit
    except Exception:  # noqa: BLE001 - any import failure means "use PyTorch"
        _kernels = False
        return _kernels

    # A fixed trip count over a slice is what LLVM vectorises; a loop bounded by min(...) it does not.
    @njit(fastmath=_FASTMATH, nogil=True, cache=True, boundscheck=False, inline="always")
    def chunk(y):  # float32 sum, sum of squares and non-zero count of a short 1-D slice
        s = np.float32(0)
        q = np.float32(0)
        c = np.int32(0)
        for j in range(y.shape[0]):
            v = y[j]
            s += v
            q += v * v
            c += np.int32(v != 0)
        return s, q, c

    @njit(fastmath=_FASTMATH, nogil=True, cache=True, boundscheck=False)
    def sums(y, out, k):  # out[k] = [sum, sum of squares, non-zero count] of 1-D y, float64 across blocks
        S = 0.0
        Q = 0.0
        C = 0
        full = y.shape[0] // BLOCK * BLOCK
        for b0 in range(0, full, BLOCK):
            s, q, c = chunk(y[b0:b0 + BLOCK])
            S += s
            Q += q
            C += c
        s, q, c = chunk(y[full:])
        out[k, 0] = S + s
        out[k, 1] = Q + q
        out[k, 2] = C + c

    @njit(fastmath=_FASTMATH, nogil=True, cache=True, boundscheck=False)
    def flat(x, out):
        sums(x, out.reshape(1, 3), 0)

    @njit(fastmath=_FASTMATH, nogil=True, cache=True, boundscheck=False)
    def rows(x, out):  # x: (R, K); out: (R, 3)
        for r in range(x.shape[0]):
            sums(x[r], out, r)

    _kernels = (flat, rows)
    return _kernels


def enabled() -> bool:
    """Whether the one-pass kernels can run here (numba importable); compiles or loads them once."""
    return bool(_compile())


def usable(t: torch.Tensor) -> bool:
    """Whether ``t`` can go through the kernels without a copy."""
    return t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() and bool(_compile())


def flat_stats(t: torch.Tensor, out: np.ndarray) -> None:
    """Write [sum, sum of squares, non-zero count] of contiguous float32 CPU ``t`` into ``out`` (float64, 3)."""
    _compile()[0](t.reshape(-1).numpy(), out)


def row_stats(t: torch.Tensor, out: np.ndarray) -> None:
    """Per-row [sum, sum of squares, non-zero count] of a contiguous float32 CPU matrix ``t`` into ``out`` (float64, (R, 3))."""
    _compile()[1](t.numpy(), out)
