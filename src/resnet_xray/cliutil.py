"""What every command module shares: model flags, one pure JSON document, skipped files.

Command modules import from here, never from :mod:`resnet_xray.cli`, so the CLI can
list them without a cycle. Nothing here imports torch at module level: ``--help`` and
``--version`` must stay fast.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from .atomic import jsonable
from .errors import XrayError

# Where print_json writes while json_output() has diverted stdout to stderr.
_json_sink: TextIO | None = None


def add_model_args(p: argparse.ArgumentParser, default_weights: str = "imagenet", *, allow_nonfinite: bool = False) -> None:
    """``--arch``, ``--weights`` and ``--seed``, meaning the same thing in every command.

    ``allow_nonfinite`` adds ``--allow-nonfinite``, for commands where looking at a model
    with NaN/Inf weights tells the user something.
    """
    from .model import ARCHS

    p.add_argument("--arch", choices=ARCHS, default=None, help="torchvision ResNet (default: the checkpoint's, else resnet50)")
    p.add_argument(
        "--weights",
        default=default_weights,
        help="imagenet | imagenet-v1 | imagenet-v2 | random | PATH (.pth/.pt/.safetensors or a checkpoint) "
        f"(default: {default_weights})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random (default: 0)")
    if allow_nonfinite:
        p.add_argument("--allow-nonfinite", action="store_true", help="load weights holding NaN/Inf (refused by default), to inspect them")


def model_from_args(args: argparse.Namespace):
    """The :class:`~resnet_xray.api.LoadedModel` the model flags name (unpacks as ``model, meta``)."""
    from .api import load_model

    extra = {"allow_nonfinite": True} if getattr(args, "allow_nonfinite", False) else {}
    return load_model(args.arch, args.weights, seed=args.seed, **extra)


def dumps(obj: Any) -> str:
    return json.dumps(jsonable(obj), indent=2, allow_nan=False)


def print_json(obj: Any) -> None:
    """Write ``obj`` as the one JSON document on the real stdout."""
    out = _json_sink or sys.stdout
    out.write(dumps(obj) + "\n")
    out.flush()


def _fileno(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None  # pytest's capsys, StringIO: nothing below Python to divert


@contextmanager
def json_output() -> Iterator[None]:
    """Send everything but :func:`print_json` to stderr, at the file-descriptor level too.

    Third-party code prints to stdout (ONNX Runtime's calibrator: "Collecting tensor
    data and making histogram ..."), from Python and from C; with ``--json`` stdout
    must carry exactly one JSON document.
    """
    global _json_sink
    real = sys.stdout
    real.flush()
    out_fd, err_fd = _fileno(real), _fileno(sys.stderr)
    saved = None
    if out_fd is not None and err_fd is not None:
        saved = os.dup(out_fd)
        os.dup2(err_fd, out_fd)
        _json_sink = os.fdopen(os.dup(saved), "w", encoding=getattr(real, "encoding", None) or "utf-8")
    else:
        _json_sink = real
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout = real
        if saved is not None:
            _json_sink.close()
            os.dup2(saved, out_fd)
            os.close(saved)
        _json_sink = None


def print_result(args: argparse.Namespace, result: Any, text: Callable[[Any], str]) -> int:
    """Render a command's typed result: with ``--json`` its ``to_dict()``, else ``text(result)``."""
    if getattr(args, "json", False):
        print_json(result.to_dict())
    else:
        print(text(result))
    return 0


def report_skipped(skipped) -> int:
    """List files that could not be used; exit status 2 if there were any."""
    for s in skipped:
        path = getattr(s, "path", None) or (s.get("path") or s.get("image") if isinstance(s, dict) else s)
        reason = getattr(s, "reason", None) or (s.get("reason") if isinstance(s, dict) else "")
        print(f"resnet-xray: skipped {path}: {reason}", file=sys.stderr)
    return 2 if skipped else 0


def warn_random(weights: Any) -> None:
    """The random-weights banner on stderr (``weights``: a ModelMeta or WeightsInfo)."""
    from .provenance import WeightsInfo

    warning = WeightsInfo.of(weights).warning
    if warning:
        print(warning, file=sys.stderr)


def out_path(value: str | os.PathLike | None) -> Path | None:
    return Path(value) if value else None


def refuse_batch_flags_without_out(args: argparse.Namespace, *flags: str) -> None:
    """Exit 2 naming the first of ``flags`` (``--workers`` ...) given without ``--out``: they only shape a batch job."""
    for flag in flags:
        if getattr(args, flag.lstrip("-").replace("-", "_"), None):
            raise XrayError(f"{flag}: only with --out FILE (.jsonl or .parquet)")
