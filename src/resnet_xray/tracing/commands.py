"""``resnet-xray trace`` and ``resnet-xray gradflow``: parse, call the trace API, print."""

from __future__ import annotations

import argparse

from ..cliutil import add_model_args, model_from_args, print_json, warn_random
from ..options import Flags


def gradflow_flags() -> Flags:
    from .gradflow import GradFlowOptions

    return Flags(
        GradFlowOptions, ("batch_size", "input_size", "steps", "lr", "data", "regimes", "device"),
        spelling={"regimes": "--regime"},
        choices={"regimes": {"both": ("batch", "running"), "batch": ("batch",), "running": ("running",)}},
    )


def _fmt(v: float) -> str:
    return f"{v:10.4g}"


def cmd_trace(args: argparse.Namespace) -> int:
    from .. import api
    from ..image import load_image

    load_image(args.image)  # a bad image fails here, before the model is built
    res = api.trace(model_from_args(args), args.image, walkthrough=args.walkthrough)
    if args.json:
        print_json(res.to_dict())
        return 0
    warn_random(res.weights)
    top = res.top1
    print(f"{args.image}: {res.arch}, weights {res.weights.source}, input {'x'.join(map(str, res.input_shape))}; "
          f"top-1 #{top['index']} {top['label']} ({top['prob']:.2%})")
    print(f"{'layer':<24} {'type':<8} {'shape':<16} {'mean':>10} {'std':>10} {'min':>10} {'max':>10} {'zeros':>6} {'L2':>10}")
    for s in res.layers:
        shape = "x".join(map(str, s.shape[1:]))
        print(f"{s.name:<24} {s.type:<8} {shape:<16} {_fmt(s.mean)} {_fmt(s.std)} {_fmt(s.min)} {_fmt(s.max)} "
              f"{'' if s.zero_frac is None else format(s.zero_frac, '6.1%'):>6} {_fmt(s.l2)}")
    print()
    print(f"{'block':<10} {'shortcut':<11} {'||F(x)||':>10} {'||shortcut||':>12} {'ratio':>7} {'cosine':>7} {'active':>7}")
    for b in res.blocks:
        print(f"{b.name:<10} {'projection' if b.projection else 'identity':<11} {b.residual_norm:10.4g} {b.shortcut_norm:12.4g} "
              f"{b.ratio:7.3f} {b.cosine:+7.3f} {b.active_frac:7.1%}")
    if res.walkthrough is not None:
        print()
        print(res.walkthrough.text())
    return 0


def cmd_gradflow(args: argparse.Namespace) -> int:
    from .. import api
    from .gradflow import rms_ratio

    options = gradflow_flags().values(args)
    res = api.gradflow(None, output=args.output, quiet=args.quiet, arch=args.arch or "resnet50", weights=args.weights,
                       seed=args.seed, **options)
    if args.json:
        print_json(res.to_dict())
        return 0
    opts = res.options
    phases = [("init", "at the start")] + ([("trained", f"after {opts.steps} SGD steps")] if res.trained else [])
    for phase, title in phases:
        for regime, nets in res.phase(phase).items():
            r, p = nets["resnet"], nets["plain"]
            print(f"== {regime} regime, {title} ==")
            print(f"{'stage boundary':<16} {opts.arch + ' RMS':>16} {'plain RMS':>12} {'plain/resnet':>13}")
            for a, b in zip(r.boundaries, p.boundaries):
                print(f"{a['name']:<16} {a['rms']:16.4g} {b['rms']:12.4g} {rms_ratio(b['rms'], a['rms']):13.4g}")
            if r.blocks:
                print(f"{'block':<10} {'shortcut':<11} {'|dL/dx|':>10} {'|shortcut|':>11} {'|residual|':>11} {'share':>6} {'rel.err':>9}")
                for b in r.blocks:
                    print(f"{b.name:<10} {b.shortcut:<11} {b.grad_norm:10.4g} {b.shortcut_term_norm:11.4g} "
                          f"{b.residual_term_norm:11.4g} {b.shortcut_share:6.2f} {b.rel_error:9.1e}")
            print(res.explanation(regime, phase))
            print()
    if res.train_losses:
        for net, losses in res.train_losses.items():
            print(f"{net} training loss: {' '.join(f'{v:.3f}' for v in losses)}")
    if args.output:
        print(f"wrote {args.output}")
    return 0


def trace_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="image file")
    add_model_args(p, allow_nonfinite=True)
    p.add_argument("--json", action="store_true", help="layers and blocks as one JSON document")
    p.add_argument("--walkthrough", action="store_true", help="also walk through the first block of stage 1 step by step")
    p.set_defaults(func=cmd_trace)


def gradflow_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p, default_weights="random")
    gradflow_flags().add(p)
    p.add_argument("-o", "--output", default=None, help="write the log-scale chart to this PNG")
    p.add_argument("--json", action="store_true", help="all numbers and the explanations as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    p.set_defaults(func=cmd_gradflow)
