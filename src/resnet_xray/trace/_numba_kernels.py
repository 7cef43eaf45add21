"""The numba loops behind :mod:`resnet_xray.trace.kernels` (imported only when a trace first needs them)."""

from __future__ import annotations

import numpy as np
from numba import njit

BLOCK = 4096
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}  # not nnan/ninf: a NaN activation must still show up as NaN


# A fixed trip count over a slice is what LLVM vectorises; a loop bounded by min(...) it does not.
@njit(fastmath=FASTMATH, nogil=True, cache=True, boundscheck=False, inline="always")
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


@njit(fastmath=FASTMATH, nogil=True, cache=True, boundscheck=False)
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


@njit(fastmath=FASTMATH, nogil=True, cache=True, boundscheck=False)
def flat(x, out):
    sums(x, out.reshape(1, 3), 0)


@njit(fastmath=FASTMATH, nogil=True, cache=True, boundscheck=False)
def rows(x, out):  # x: (R, K); out: (R, 3)
    for r in range(x.shape[0]):
        sums(x[r], out, r)
