"""Fine-tuning throughput: resnet-xray's ``fit`` vs a plain loop written to torchvision's reference recipe.

The plain loop follows ``references/classification/train.py``: ImageFolder, RandomResizedCrop
+ flip, a RandomSampler DataLoader with pin_memory, SGD (momentum 0.9, wd 1e-4), label
smoothing, ``model.train(); output = model(image); loss.backward(); optimizer.step()``.
Both sides get the same arch, batch, image size, worker count and thread count, and are
run alternately (A B A B) so a busy machine penalises both equally. Then the data-wait
fraction of our loop with the default worker count. Prints measured numbers only.

    python benchmarks/bench_train.py out/reference/data --arch resnet50 --steps 12
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torchvision
from torch import nn
from torchvision import transforms as T

from resnet_xray.model import build_model
from resnet_xray.train.bench import DataBenchOptions, bench_data
from resnet_xray.train.data import make_loaders
from resnet_xray.train.finetune import FinetuneOptions, fit


def recipe_loop(data_dir: str, arch: str, size: int, batch: int, workers: int, steps: int) -> float:
    """images/s of the reference recipe's train_one_epoch, steps 2..steps+1 (first step is warm-up)."""
    tf = T.Compose([T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip(), T.PILToTensor(),
                    T.ConvertImageDtype(torch.float), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    ds = torchvision.datasets.ImageFolder(os.path.join(data_dir, "train"), tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=torch.utils.data.RandomSampler(ds),
                                         num_workers=workers, pin_memory=True)
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=len(ds.classes))
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1 * batch / 256, momentum=0.9, weight_decay=1e-4)
    model.train()
    n, t0 = 0, None
    while True:
        for i, (image, target) in enumerate(loader):
            output = model(image)
            loss = criterion(output, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if t0 is None:
                t0 = time.perf_counter()
                continue
            n += len(image)
            if n >= steps * batch:
                return n / (time.perf_counter() - t0)


def ours(data_dir: str, arch: str, size: int, batch: int, workers: int, steps: int, **kw) -> float:
    data = make_loaders(data_dir, image_size=size, batch_size=batch, workers=workers, seed=0)
    torch.manual_seed(0)
    model = build_model(arch, num_classes=len(data.class_names))
    # Many epochs so the schedule is long; stop_after_steps ends the run mid-epoch (no evaluation timed).
    opts = FinetuneOptions(arch=arch, weights="random", epochs=50, batch_size=batch, workers=workers, optimizer="sgd",
                           progress=False, stop_after_steps=steps + 1, **kw)
    r = fit(model, data, opts, pretrained=False)
    return r["steps_after_first"] * batch / r["seconds_after_first"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=FinetuneOptions.workers)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--amp", action="store_true", help="also time ours with --amp --channels-last (the recipe has no CPU AMP)")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; {a.arch} {a.size}px, "
          f"batch {a.batch_size}, {a.workers} workers, {a.steps} timed steps, {a.rounds} alternating rounds")
    rows: dict[str, list[float]] = {"recipe": [], "ours": []}
    if a.amp:
        rows["ours --amp --channels-last"] = []
    args = (a.data, a.arch, a.size, a.batch_size, a.workers, a.steps)
    for r in range(a.rounds):
        rows["recipe"].append(recipe_loop(*args))
        rows["ours"].append(ours(*args))
        if a.amp:
            rows["ours --amp --channels-last"].append(ours(*args, amp=True, channels_last=True))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in rows.items()), flush=True)
    best = {k: max(v) for k, v in rows.items()}
    print("\n| loop | images/s (best of rounds) | vs recipe |\n|---|---|---|")
    for k, v in best.items():
        print(f"| {k} | {v:.1f} | {v / best['recipe']:.2f}x |")
    d = bench_data(a.data, DataBenchOptions(arch=a.arch, batch_size=a.batch_size, image_size=a.size, steps=a.steps))
    print(f"\ndata wait with the default {d['workers']} workers: {d['data_wait_fraction']:.1%} of step time "
          f"(loader alone {d['loader_images_per_s']:.0f} img/s, model step alone {d['step_images_per_s']:.1f} img/s)")


if __name__ == "__main__":
    main()
