"""Does ``torch.compile`` speed up a CPU training step? Eager and compiled, alternately, same batches.

    python benchmarks/bench_train_compile.py --arch resnet18 --size 64 --steps 20 --rounds 2

Prints each round's images/s, the first (compiling) step's seconds, and compiled/eager.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torchvision
from torch import nn


def rate(arch: str, size: int, steps: int, compiled: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, num_classes=10).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    xs = [torch.randn(32, 3, size, size).contiguous(memory_format=torch.channels_last) for _ in range(4)]
    ys = [torch.randint(0, 10, (32,)) for _ in range(4)]
    forward = torch.compile(model, dynamic=False) if compiled else model

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(forward(xs[i % 4]), ys[i % 4], label_smoothing=0.1).backward()
        opt.step()

    t0 = time.perf_counter()
    step(0)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps * 32 / (time.perf_counter() - t0), first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
          f"{a.arch} {a.size}px batch 32, AdamW, channels-last")
    rounds = []
    for r in range(a.rounds):
        eager, e_first = rate(a.arch, a.size, a.steps, False)
        comp, c_first = rate(a.arch, a.size, a.steps, True)
        rounds.append({"eager_images_per_s": eager, "compiled_images_per_s": comp, "eager_first_step_s": e_first,
                       "compiled_first_step_s": c_first})
        print(f"round {r + 1}: eager {eager:.1f} img/s (first step {e_first:.1f} s), compiled {comp:.1f} img/s "
              f"(first step {c_first:.1f} s): compiled/eager {comp / eager:.2f}x", flush=True)

    from records import write_record

    write_record("bench_train_compile", {"arch": a.arch, "size": a.size, "steps": a.steps, "rounds": rounds})


if __name__ == "__main__":
    main()
