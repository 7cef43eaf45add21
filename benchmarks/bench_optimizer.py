"""Optimizer step time on a ResNet's real parameter groups, side by side in one process.

Times ``optimizer.step()`` alone (gradients are fixed random tensors), median of ``--steps``
after one warm-up step: torch's SGD and AdamW as torch builds them by default (foreach) and
fused, as ``finetune`` builds them, and ``--optimizer muon`` with its Newton-Schulz iteration in
float32 (the AVX2 path) and bfloat16 (where the CPU has it natively). Then the iteration alone
on every Muon matrix, in the plain and the Gram form. Prints measured numbers only.

    python benchmarks/bench_optimizer.py --arch resnet50
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/bench_optimizer.py
"""

from __future__ import annotations

import argparse
import time

import torch

from bench_train import cpu_line
from resnet_xray.model import build_model
from resnet_xray.train.optim import make_optimizer, muon_params
from resnet_xray.train.precision import cpu_supports_bf16
from resnet_xray.train.recipe import FinetuneOptions
from resnet_xray.train.muon import orthogonalize, plain_newton_schulz


def median_ms(fn, steps: int) -> float:
    fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--steps", type=int, default=9)
    ap.add_argument("--ns-steps", type=int, default=3)
    a = ap.parse_args()
    print(f"{cpu_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads; {a.arch}")
    torch.manual_seed(0)
    model = build_model(a.arch, num_classes=10).to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3

    def built(name: str):
        groups = make_optimizer(model, FinetuneOptions(optimizer=name, ns_steps=a.ns_steps), 2e-3).param_groups
        return [{k: g[k] for k in ("params", "lr", "weight_decay")} for g in groups]

    rows = {
        "SGD, torch default (foreach)": torch.optim.SGD(built("sgd"), lr=0.01, momentum=0.9, nesterov=True),
        "SGD, fused (finetune's)": make_optimizer(model, FinetuneOptions(optimizer="sgd"), 0.01),
        "AdamW, torch default (foreach)": torch.optim.AdamW(built("adamw"), lr=2e-3),
        "AdamW, fused (finetune's)": make_optimizer(model, FinetuneOptions(optimizer="adamw"), 2e-3),
    }
    muon = make_optimizer(model, FinetuneOptions(optimizer="muon", ns_steps=a.ns_steps), 2e-3)
    muon.ns_dtype = torch.float32
    rows[f"Muon, float32 iteration ({a.ns_steps} steps)"] = muon
    if cpu_supports_bf16():
        muon = make_optimizer(model, FinetuneOptions(optimizer="muon", ns_steps=a.ns_steps), 2e-3)
        muon.ns_dtype = torch.bfloat16
        rows[f"Muon, bfloat16 iteration ({a.ns_steps} steps)"] = muon
    print("\n| optimizer | step ms (median) |\n|---|---|")
    step_ms = {}
    for name, opt in rows.items():
        step_ms[name] = median_ms(opt.step, a.steps)
        print(f"| {name} | {step_ms[name]:.1f} |", flush=True)

    mats = [p.grad.reshape(p.shape[0], -1) for p in muon_params(model, FinetuneOptions().muon_stages)]
    mats = [(m.T if m.shape[0] > m.shape[1] else m).contiguous() for m in mats]
    mats = [m / m.norm() for m in mats]
    plain = median_ms(lambda: [plain_newton_schulz(m, a.ns_steps) for m in mats], a.steps)
    ours = median_ms(lambda: [orthogonalize(m, a.ns_steps) for m in mats], a.steps)
    print(f"\nNewton-Schulz alone, float32, {len(mats)} matrices: plain form {plain:.1f} ms, "
          f"ours (Gram form where wide) {ours:.1f} ms: {plain / ours:.2f}x")

    from records import write_record

    write_record("bench_optimizer", {"arch": a.arch, "steps": a.steps, "ns_steps": a.ns_steps, "threads": torch.get_num_threads(),
                                     "step_ms": step_ms, "newton_schulz_plain_ms": plain, "newton_schulz_gram_ms": ours})


if __name__ == "__main__":
    main()
