"""torchrun / DistributedDataParallel plumbing: gloo on CPU, nccl on CUDA, rank-0-only side effects.

``torchrun --nproc_per_node=N -m resnet_xray finetune ...`` sets ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK``; :func:`init_from_env` turns those into an initialised process group.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import XrayError


@dataclass(frozen=True)
class DistContext:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def shared_store_warning(env: dict[str, str] | None = None) -> str | None:
    """The warning for an elastic run whose restarts would reuse round 1's bootstrap store, else None.

    torchrun 2.14.1 (c10d rendezvous, ``TORCHELASTIC_USE_AGENT_STORE=True`` by default) makes
    the workers' TCP store once, in the first round, and keeps it across restarts with no
    per-round key prefix: restarted workers can read a dead worker's gloo address from it
    ("connectFullMesh ... Connection refused"), and a launcher that was rank 0 and is not any
    more keeps pointing at its own old store (pytorch/pytorch#135712; #182375 fixed only the
    opposite rank change). The variable is read by the launcher, so a worker can only warn.
    """
    env = os.environ if env is None else env
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or int(env.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) < 1:
        return None
    return ("warning: elastic restarts with torchrun's shared rendezvous store can fail to reconnect "
            "(pytorch#135712); export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before torchrun on every node")


def init_from_env(device_kind: str = "cpu") -> DistContext:
    """Join the process group torchrun describes in the environment; a no-op for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if not dist.is_available():
        raise XrayError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    warning = shared_store_warning()
    if warning and rank == 0:
        print(warning, file=sys.stderr)
    return DistContext(world, rank, local, backend)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (float64, so image counts stay exact)."""
    if not ctx.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_true(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """True only if ``flag`` holds on every rank: all ranks must skip a bad step together."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def average_buffers(model: torch.nn.Module, ctx: DistContext) -> None:
    """Average BatchNorm running statistics over ranks.

    DDP broadcasts buffers from rank 0 *before* each forward, but every rank's last
    forward then updates its own copy; averaging makes the replicas identical again
    (and uses every rank's data) before evaluating or saving.
    """
    if not ctx.enabled:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(ctx.world_size)


def max_weight_difference(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> float:
    """Largest absolute difference of any parameter or buffer between this rank and rank 0."""
    if not ctx.enabled:
        return 0.0
    flat = torch.cat([t.detach().float().flatten() for t in model.state_dict().values() if t.is_floating_point()]).to(device)
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = torch.tensor([(flat - ref).abs().max().item()], dtype=torch.float64, device=device)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff.item())

