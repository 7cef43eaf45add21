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


# Min and max on integer order keys: a float32's bits, with the magnitude bits flipped for negative
# numbers, order like the floats themselves (NaN aside). Integer max/min reductions vectorise;
# float ones do not (their NaN rules block it). A NaN shows in the sum, and the caller then reads
# the extremes with PyTorch instead.
@njit(nogil=True, cache=True, inline="always")
def order_key(i):  # its own inverse: maps a float's bits to its key, and a key back to the bits
    return i ^ ((i >> 31) & np.int32(0x7FFFFFFF))


@njit(fastmath=FASTMATH, nogil=True, cache=True, boundscheck=False, inline="always")
def chunk_extremes(y, yi):  # float32 sum and sum of squares, int32 max and min keys of a short 1-D slice
    s = np.float32(0)
    q = np.float32(0)
    hi = np.int32(-2147483648)
    lo = np.int32(2147483647)
    for j in range(y.shape[0]):
        v = y[j]
        s += v
        q += v * v
        k = order_key(yi[j])
        hi = max(hi, k)
        lo = min(lo, k)
    return s, q, hi, lo


@njit(fastmath=FASTMATH, nogil=True, cache=True, boundscheck=False)
def rows_extremes(x, out, bits):
    """x: (R, K) float32. out: (R, 2) float64 = [sum, sum of squares] per row; bits: (R, 2) int32 = the
    float32 bit patterns of [max, min] per row (the caller views them as float32)."""
    xi = x.view(np.int32)
    for r in range(x.shape[0]):
        y = x[r]
        yi = xi[r]
        S = 0.0
        Q = 0.0
        hi = np.int32(-2147483648)
        lo = np.int32(2147483647)
        full = y.shape[0] // BLOCK * BLOCK
        for b0 in range(0, full, BLOCK):
            s, q, h, l = chunk_extremes(y[b0:b0 + BLOCK], yi[b0:b0 + BLOCK])
            S += s
            Q += q
            hi = max(hi, h)
            lo = min(lo, l)
        s, q, h, l = chunk_extremes(y[full:], yi[full:])
        out[r, 0] = S + s
        out[r, 1] = Q + q
        bits[r, 0] = order_key(max(hi, h))
        bits[r, 1] = order_key(min(lo, l))
