"""The main job on the bundled cat photo: what ResNet-50 is, and what it says about Chelsea."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .dissect import analyze
from .dissect.text import summary_text
from .classification import ClassifyOptions, classify
from .errors import XrayError
from .image import bundled_cat
from .model import ModelMeta, load_model, random_weights_warning
from .reporting import ReportOptions, build_report
from .options import option

BANNER = "!" * 78


@dataclass
class DemoOptions:
    arch: str = "resnet50"
    weights: str = option("imagenet", "falls back to random (loudly) when these cannot be had")
    image: Path | None = option(None, "default: the bundled cat photo")
    out_dir: Path = option(Path("out/demo"), "output folder")
    quiet: bool = option(False, "no progress display on stderr")


def load_demo_model(opts: DemoOptions) -> tuple[nn.Module, ModelMeta]:
    """The requested weights, or random ones under a loud warning: the demo must always run."""
    try:
        return load_model(opts.arch, opts.weights)
    except XrayError as e:
        print(f"{BANNER}\n{e}", file=sys.stderr)
        model, meta = load_model(opts.arch, "random")
        print(f"{random_weights_warning(meta)}\n{BANNER}", file=sys.stderr)
        return model, meta


def run_demo(opts: DemoOptions | None = None) -> int:
    opts = opts or DemoOptions()
    image = opts.image or bundled_cat()
    model, meta = load_demo_model(opts)
    print(summary_text(analyze(model, meta.arch)))
    print()
    result = classify([image], model, meta, ClassifyOptions(topk=5))
    print(f"Top-5 for {image} ({meta.weights}; {meta.preprocessing.source}):")
    for p in result.results:
        for t in p.topk:
            print(f"  {t['prob']:7.2%}  {t['label']} (#{t['index']})")
    print()
    print(f"Writing the report (every layer, kernels, Grad-CAM, residuals, gradient flow) to {opts.out_dir} ...", flush=True)
    res = build_report(image, model, meta, ReportOptions(out_dir=opts.out_dir, quiet=opts.quiet))
    print(f"wrote {res.json} and {res.html} ({res.html_bytes / 1e6:.1f} MB, self-contained) in {res.total_s:.0f} s")
    print(f"open it: file://{res.html.resolve()}")
    if not meta.pretrained:
        print(random_weights_warning(meta), file=sys.stderr)
    return 0
