"""One-pass reductions for the trace: sum, sum of squares and non-zero count of a float32 array.

PyTorch reduces a tensor one statistic per pass, and a trace wants three or four of them for
every activation, so memory traffic, not arithmetic, decides its cost. These loops read each
element once and LLVM vectorises them (numba, ``fastmath`` reassociation only: NaN and inf keep
their IEEE meaning). Sums run in float32 inside blocks of 4096 elements and in float64
across blocks, as precise as PyTorch's own cascade sum. Minimum and maximum stay with PyTorch:
numba does not vectorise them.

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
    _kernels = (nk.flat, nk.rows)
    return _kernels


def enabled() -> bool:
    """Whether the one-pass kernels can run here (numba importable); imports them once (numba compiles on first call)."""
    return bool(_compile())


def flat_stats(t: torch.Tensor, out: np.ndarray) -> None:
    """Write [sum, sum of squares, non-zero count] of contiguous float32 CPU ``t`` into ``out`` (float64, 3)."""
    _compile()[0](t.reshape(-1).numpy(), out)


def row_stats(t: torch.Tensor, out: np.ndarray) -> None:
    """Per-row [sum, sum of squares, non-zero count] of a contiguous float32 CPU matrix ``t`` into ``out`` (float64, (R, 3))."""
    _compile()[1](t.numpy(), out)
