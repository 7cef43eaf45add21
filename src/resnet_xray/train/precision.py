"""Which number format a training step runs in: fp16 with loss scaling on CUDA, bf16 on CPUs that have it, else fp32."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..errors import XrayError
from . import distributed as D


@dataclass(frozen=True)
class Precision:
    autocast_dtype: torch.dtype | None  # None: full fp32
    use_scaler: bool  # fp16 gradients underflow without loss scaling; bf16 ones do not

    def autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.float16: "fp16 autocast + GradScaler", torch.bfloat16: "bf16 autocast"}[self.autocast_dtype]


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(amp: bool, device: torch.device, *, strict: bool = False) -> Precision:
    """fp16 + GradScaler on CUDA; bf16 autocast on CPUs with native bf16; otherwise fp32.

    Without native bf16, ``--amp`` warns in one line and trains in fp32 (emulated bf16 is
    slower than fp32); ``strict`` raises instead, for callers that pick another plan.
    """
    if not amp:
        return Precision(None, False)
    if device.type == "cuda":
        return Precision(torch.float16, True)
    if device.type == "cpu":
        if not cpu_supports_bf16():
            msg = "--amp: this CPU has no native bfloat16 (needs AVX512-BF16 or AMX) and there is no CUDA device"
            if strict:
                raise XrayError(f"{msg}; run without --amp")
            print(f"resnet-xray: warning: {msg}; training in fp32", file=sys.stderr)
            return Precision(None, False)
        return Precision(torch.bfloat16, False)
    raise XrayError(f"--amp: no mixed precision for device {device.type}; run without --amp")


def resolve_device(name: str, ctx: D.DistContext) -> torch.device:
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", ctx.local_rank if ctx.enabled else torch.cuda.current_device())
