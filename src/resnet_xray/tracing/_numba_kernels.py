"""The numba loops behind :mod:`resnet_xray.tracing.kernels` (imported only when a trace first needs them).

Each reduction comes twice: a serial loop, and a ``parallel=True`` one that splits the same blocks (or
rows) over threads. The parallel ones run on numba's OpenMP layer (numba's own libgomp pool, loaded
beside PyTorch's: its other layers contend with PyTorch's spinning workers, see kernels.threads).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

BLOCK = 4096
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}  # not nnan/ninf: a NaN activation must still show up as NaN
INT_MIN = -2147483648
INT_MAX = 2147483647


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


@njit(fastmath=FASTMATH, nogil=True, cache=True, boundscheck=False, inline="always")
def flat_block(x, acc, b):  # acc[b] = chunk of block b of 1-D x
    acc[b, 0], acc[b, 1], acc[b, 2] = chunk(x[b * BLOCK:(b + 1) * BLOCK])


@njit(fastmath=FASTMATH, nogil=True, cache=True, boundscheck=False)
def flat(x, out):  # out = [sum, sum of squares, non-zero count] of 1-D x, float32 in blocks, float64 across
    acc = np.empty(((x.shape[0] + BLOCK - 1) // BLOCK, 3))
    for b in range(acc.shape[0]):
        flat_block(x, acc, b)
    out[:] = acc.sum(0)


@njit(fastmath=FASTMATH, nogil=True, cache=True, boundscheck=False, parallel=True)
def flat_par(x, out):  # flat, its blocks split over threads
    acc = np.empty(((x.shape[0] + BLOCK - 1) // BLOCK, 3))
    for b in prange(acc.shape[0]):
        flat_block(x, acc, b)
    out[:] = acc.sum(0)


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
    hi = np.int32(INT_MIN)
    lo = np.int32(INT_MAX)
    for j in range(y.shape[0]):
        v = y[j]
        s += v
        q += v * v
        k = order_key(yi[j])
        hi = max(hi, k)
        lo = min(lo, k)
    return s, q, hi, lo


@njit(fastmath=FASTMATH, nogil=True, cache=True, boundscheck=False, inline="always")
def row_extremes(x, xi, r, out, bits):  # one row of rows_extremes
    y = x[r]
    yi = xi[r]
    S = 0.0
    Q = 0.0
    hi = np.int32(INT_MIN)
    lo = np.int32(INT_MAX)
    for b in range((y.shape[0] + BLOCK - 1) // BLOCK):
        s, q, h, l = chunk_extremes(y[b * BLOCK:(b + 1) * BLOCK], yi[b * BLOCK:(b + 1) * BLOCK])
        S += s
        Q += q
        hi = max(hi, h)
        lo = min(lo, l)
    out[r, 0] = S
    out[r, 1] = Q
    bits[r, 0] = order_key(hi)
    bits[r, 1] = order_key(lo)


@njit(fastmath=FASTMATH, nogil=True, cache=True, boundscheck=False)
def rows_extremes(x, out, bits):
    """x: (R, K) float32. out: (R, 2) float64 = [sum, sum of squares] per row; bits: (R, 2) int32 = the
    float32 bit patterns of [max, min] per row (the caller views them as float32)."""
    xi = x.view(np.int32)
    for r in range(x.shape[0]):
        row_extremes(x, xi, r, out, bits)


@njit(fastmath=FASTMATH, nogil=True, cache=True, boundscheck=False, parallel=True)
def rows_extremes_par(x, out, bits):  # rows_extremes, its rows split over threads
    xi = x.view(np.int32)
    for r in prange(x.shape[0]):
        row_extremes(x, xi, r, out, bits)


# A residual block's add, y = F + S, and the ReLU after it, from one read of F and S. A float32 add is
# rounded once, so F + S here is bit for bit the sum PyTorch's add writes (and its ReLU then clamps).
@njit(fastmath=FASTMATH, nogil=True, cache=True, boundscheck=False, inline="always")
def chunk_residual(f, s, y, r, acc, b):
    """One short slice: y = f + s and r = relu(y) into the scratch ``y`` and ``r``, then into acc[b] the
    float32 partials [sum y, sum y^2, sum f*s, sum r, sum r^2, count r != 0] and int32 max/min keys of y."""
    n = f.shape[0]
    d = np.float32(0)
    for j in range(n):
        v = f[j] + s[j]
        y[j] = v
        r[j] = v if v > 0 else np.float32(0)
        d += f[j] * s[j]
    acc[b, 0], acc[b, 1], hi, lo = chunk_extremes(y[:n], y[:n].view(np.int32))
    acc[b, 3], acc[b, 4], acc[b, 5] = chunk(r[:n])
    acc[b, 2], acc[b, 6], acc[b, 7] = d, hi, lo


@njit(fastmath=FASTMATH, nogil=True, cache=True, boundscheck=False, inline="always")
def combine_residual(acc, out, bits):
    """Per-block partials -> out = [sum y, sum y^2, F.S, sum relu(y), sum relu(y)^2, count y > 0] (float64)
    and bits = the float32 bit patterns of [max y, min y]."""
    for k in range(6):
        out[k] = 0.0
    hi = np.int32(INT_MIN)
    lo = np.int32(INT_MAX)
    for b in range(acc.shape[0]):
        for k in range(6):
            out[k] += acc[b, k]
        hi = max(hi, np.int32(acc[b, 6]))
        lo = min(lo, np.int32(acc[b, 7]))
    bits[0] = order_key(hi)
    bits[1] = order_key(lo)


@njit(fastmath=FASTMATH, nogil=True, cache=True, boundscheck=False)
def residual(f, s, out, bits):
    """f, s: 1-D float32 of one length (F(x) and the shortcut). See combine_residual for out and bits."""
    nb = (f.shape[0] + BLOCK - 1) // BLOCK
    acc = np.empty((nb, 8))
    y = np.empty(BLOCK, np.float32)
    r = np.empty(BLOCK, np.float32)
    for b in range(nb):
        chunk_residual(f[b * BLOCK:(b + 1) * BLOCK], s[b * BLOCK:(b + 1) * BLOCK], y, r, acc, b)
    combine_residual(acc, out, bits)


@njit(fastmath=FASTMATH, nogil=True, cache=True, boundscheck=False, parallel=True)
def residual_par(f, s, out, bits):  # residual, its blocks split over threads (each with its own scratch)
    nb = (f.shape[0] + BLOCK - 1) // BLOCK
    acc = np.empty((nb, 8))
    for b in prange(nb):
        y = np.empty(BLOCK, np.float32)
        r = np.empty(BLOCK, np.float32)
        chunk_residual(f[b * BLOCK:(b + 1) * BLOCK], s[b * BLOCK:(b + 1) * BLOCK], y, r, acc, b)
    combine_residual(acc, out, bits)
