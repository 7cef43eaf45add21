"""Transfer learning offline: a backbone trained on the reference task, fine-tuned on shapes it never saw.

No ImageNet weights can be downloaded here, so the reference model stands in for them, and
``make-dataset --task transfer`` (hexagon, diamond, ellipse, trapezoid, semicircle; 30 images
per class by default) is the second task. Each row is the ``finetune`` a user with ImageNet
weights would run, with ``--weights BACKBONE``, one after the other:

- from scratch (``--weights random``, the fast recipe), as many epochs as the whole-network rows;
- fc only, frozen backbone (``--freeze backbone``): the seed's ``Linear(features, classes)``;
- the whole network with discriminative learning rates (``--layer-lr-decay 0.5``);
- gradual unfreezing (``--freeze gradual``: head first, then layer4, layer3, ...).

    python benchmarks/bench_transfer.py out/reference/resnet50/best.pt out/transfer/data --epochs 6

Prints each row as it finishes, then the goal lines.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from resnet_xray.datasets import ReferenceOptions, make_reference_dataset
from resnet_xray.train.job import finetune
from resnet_xray.train.recipe import FinetuneOptions


def rows(backbone: str, epochs: int, fc_epochs: int) -> dict[str, dict]:
    pre = {"weights": backbone, "optimizer": "adamw", "recipe": "classic"}
    return {
        "from scratch": {"weights": "random", "epochs": epochs},
        "fc only, frozen backbone": {**pre, "freeze": "backbone", "epochs": fc_epochs},
        "whole network, discriminative lr (0.5 per stage)": {**pre, "layer_lr_decay": 0.5, "epochs": epochs},
        "gradual unfreezing": {**pre, "freeze": "gradual", "epochs": epochs},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("backbone", help="a finetune best.pt (the reference model)")
    ap.add_argument("data", help="the second task's folder; made with make-dataset --task transfer if missing")
    ap.add_argument("--per-class", type=int, default=30, help="training images per class when making the data")
    ap.add_argument("--epochs", type=int, default=6, help="epochs of the scratch and whole-network rows")
    ap.add_argument("--fc-epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="loader processes (default: finetune's)")
    ap.add_argument("--out", default=None, help="default: beside DATA")
    a = ap.parse_args()
    ck = torch.load(a.backbone, map_location="cpu", weights_only=True)
    size = int(ck["preprocessing"]["crop"])
    if not Path(a.data, "dataset.json").exists():
        make_reference_dataset(a.data, ReferenceOptions(task="transfer", classes=5, per_class=a.per_class,
                                                        val_per_class=40, size=size))
    out = Path(a.out or Path(a.data).parent / "runs")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; backbone {a.backbone} ({ck['arch']}, {len(ck['class_names'])} classes, "
          f"{size} px, val accuracy {ck.get('metrics', {}).get('val_accuracy', float('nan')):.1%} on its own task)")
    print("\n| run | epochs | best val accuracy | minutes |\n|---|---|---|---|", flush=True)
    results = {}
    for name, kw in rows(a.backbone, a.epochs, a.fc_epochs).items():
        opts = FinetuneOptions(arch=ck["arch"], batch_size=a.batch_size, workers=a.workers, progress=False,
                               image_size=size, seed=0, **kw)
        t0 = time.perf_counter()
        r = finetune(a.data, opts, out / name.split(",")[0].replace(" ", "_"))
        minutes = (time.perf_counter() - t0) / 60
        results[name] = (r["best"]["accuracy"], minutes)
        print(f"| {name} | {kw['epochs']} | {r['best']['accuracy']:.1%} | {minutes:.2f} |", flush=True)
    scratch_acc, scratch_min = results["from scratch"]
    # the goal holds if some transferred route beats scratch by 20 points in no more wall time (10% noise allowed)
    met = []
    for name, (acc, minutes) in results.items():
        if name in ("from scratch", "fc only, frozen backbone"):
            continue
        ok = acc - scratch_acc >= 0.20 and minutes <= scratch_min * 1.1
        met.append(ok)
        print(f"{name} - scratch: {100 * (acc - scratch_acc):+.1f} points ({minutes:.2f} vs {scratch_min:.2f} min): "
              f"{'MET' if ok else 'NOT MET'}")
    print(f"goal >= +20 points over scratch at equal wall time: {'MET' if any(met) else 'NOT MET'}")
    fc_min = results["fc only, frozen backbone"][1]
    print(f"fc only: {fc_min:.2f} min; goal < 1 minute: {'MET' if fc_min < 1 else 'NOT MET'}")

    from records import write_record

    write_record("bench_transfer", {"backbone": a.backbone, "size": size, "epochs": a.epochs, "fc_epochs": a.fc_epochs,
                                    "runs": {name: {"best_accuracy": acc, "minutes": minutes} for name, (acc, minutes) in results.items()}})


if __name__ == "__main__":
    main()
