"""``resnet-xray explore``: load the models named here, then serve the explorer page until Ctrl-C."""

from __future__ import annotations

import argparse
import sys

from ..cliutil import add_model_args, model_from_args, warn_random
from ..options import Flags


def explore_flags() -> Flags:
    from .workspace import ExploreOptions

    return Flags(ExploreOptions, ("host", "port", "browser", "topk", "max_upload_mb", "cache_mb"),
                 spelling={"max_upload_mb": "--max-upload-mb", "cache_mb": "--cache-mb"})


def cmd_explore(args: argparse.Namespace) -> int:
    from .. import api

    from ..deploy.layerchart import read_layers_doc

    opts = explore_flags().build(args)  # a bad port or size is refused before any model is loaded
    for path in args.layers or ():
        read_layers_doc(path, "--layers")  # and a bad table too
    if not opts.local:
        print(f"resnet-xray: warning: --host {opts.host}: the explorer is reachable from other machines, and anyone who "
              "reaches it can upload photos and use this machine's CPU; it has no login", file=sys.stderr)
    model = model_from_args(args)
    # --compare random is another draw (the next seeds), not the main model again
    others = [api.load_model(args.arch, w, seed=args.seed + 1 + i if w == "random" else args.seed)
              for i, w in enumerate(args.compare or ())]
    explorer = api.explore(model, opts, compare=others, artefacts=args.model or (), layers=args.layers or ())
    warn_random(explorer.weights)
    if args.check:
        print(f"resnet-xray explore: ready to serve {explorer.check()}; --check: not serving", file=sys.stderr)
        return 0
    explorer.serve()
    return 0


def explore_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--compare", action="append", metavar="WEIGHTS",
                   help="another model on the same photos, layer by layer (a fused, pruned or other checkpoint, or random); "
                        "repeatable")
    p.add_argument("--model", action="append", metavar="ARTEFACT",
                   help="a deployed .onnx or .xml file set against the main model at its output; repeatable")
    p.add_argument("--layers", action="append", metavar="LAYERS.json",
                   help="a file `resnet-xray layers --json` wrote: the page shows its per-layer table, and each op's time and "
                        "error once deployed; repeatable")
    p.add_argument("--check", action="store_true",
                   help="load the models, bind the port and trace the bundled cat, then exit without serving")
    explore_flags().add(p)
    p.set_defaults(func=cmd_explore)
