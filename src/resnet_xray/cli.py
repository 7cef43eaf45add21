"""The ``resnet-xray`` command: parse, call one API verb, render.

Every subcommand is listed once, in :data:`COMMANDS`, with the module and function
that add its flags. Only the chosen command's module is imported, so ``--help`` and
``--version`` never load torch, and ``classify`` never loads onnx or matplotlib.

User errors (:class:`~resnet_xray.errors.XrayError`) become one line on stderr and
exit status 2; an option refused by its options dataclass is named by its flag.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import __version__
from .errors import XrayError
from .options import OptionError


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    setup: str  # "module:function" that adds the flags and sets func=...; imported only when chosen

    def add_arguments(self) -> Callable[[argparse.ArgumentParser], None]:
        module, func = self.setup.split(":")
        return getattr(importlib.import_module(module), func)


# Every subcommand, in the order of the article: foundation, anatomy, trace/visualise, report, train, deploy, prune.
COMMANDS: tuple[Command, ...] = (
    Command("classify", "top-k ImageNet (or checkpoint) labels for images and folders", "resnet_xray.commands:classify_args"),
    Command("preprocess", "save what the network sees and print the tensor's statistics", "resnet_xray.commands:preprocess_args"),
    Command("anatomy", "the measured layer table, Table 1 summary, totals and breakdowns", "resnet_xray.commands:anatomy_args"),
    Command("demo", "the main job on the bundled cat photo", "resnet_xray.commands:demo_args"),
    Command("trace", "every operation's output statistics and each block's residual numbers, one forward pass",
            "resnet_xray.tracing.commands:trace_args"),
    Command("gradflow", "measure gradient flow in ResNet vs plain (shortcuts removed), both BatchNorm regimes",
            "resnet_xray.tracing.commands:gradflow_args"),
    Command("show", "pictures: feature grids, kernels, Grad-CAM, stage sheets (PNG)", "resnet_xray.viz.commands:show_args"),
    Command("report", "one self-contained HTML page (and JSON) following an image through the network",
            "resnet_xray.reporting.commands:report_args"),
    Command("explore", "a local web page to explore the network on any photo: layers, channels, Grad-CAM, model vs model",
            "resnet_xray.explorer.commands:explore_args"),
    Command("make-dataset", "write the offline reference task (shapes on clutter, with boxes)",
            "resnet_xray.train.commands:make_dataset_args"),
    Command("finetune", "fine-tune on an image folder (new classifier; works under torchrun)",
            "resnet_xray.train.commands:finetune_args"),
    Command("finetune-multitask", "shared backbone + classification and box heads (needs boxes.csv); same as finetune --multitask",
            "resnet_xray.train.commands:finetune_multitask_args"),
    Command("bench-data", "loader images/s vs model step images/s, and the data-wait fraction",
            "resnet_xray.train.commands:bench_data_args"),
    Command("fuse", "fold every BatchNorm into the conv before it, and check against the unfused model",
            "resnet_xray.deploy.commands:fuse_args"),
    Command("export", "export to ONNX (onnx.checker + ONNX Runtime vs eager check); TensorRT engines",
            "resnet_xray.deploy.commands:export_args"),
    Command("quantize", "static INT8 (ONNX Runtime QDQ) calibrated on an image folder, with an agreement report",
            "resnet_xray.deploy.commands:quantize_args"),
    Command("bench", "every inference path side by side: latency, throughput, GFLOP/s vs measured peak",
            "resnet_xray.deploy.commands:bench_args"),
    Command("evaluate", "accuracy of deployed models (.onnx / .xml) on a labelled folder, and agreement with the first",
            "resnet_xray.deploy.commands:evaluate_args"),
    Command("layers", "per-layer truth for a deployed model: MACs, each engine's profiled time, error against a reference",
            "resnet_xray.deploy.commands:layers_args"),
    Command("optimize", "prune -> fuse -> export -> INT8 on every engine -> measure -> the fastest model within an accuracy budget",
            "resnet_xray.deploy.commands:optimize_args"),
    Command("prune", "iterative structured channel pruning (importance -> prune -> fine-tune -> evaluate)",
            "resnet_xray.pruning.commands:prune_args"),
)


ALL = "*"


class Parser(argparse.ArgumentParser):
    """argparse, with "did you mean --topk?" for a mistyped flag or command, from the parser that owns it.

    Subcommand parsers are of this class too (argparse makes them ``type(parent)``), so an error
    raised while parsing a command's flags shows that command's usage.
    """

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._seen = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):  # type: ignore[override]
        unknown = self.unknown_flags(getattr(self, "_seen", []))
        if unknown and "unrecognized arguments" not in message:
            message = f"{message}; unrecognized arguments: {' '.join(unknown)}"  # the typo is the likelier cause
        hint = self.suggestion(unknown) if unknown else _choice_hint(message)
        super().error(message + hint)

    def unknown_flags(self, argv: list[str]) -> list[str]:
        """The ``--flags`` in ``argv`` that this parser has not declared (``--x=1`` counts as ``--x``)."""
        out = []
        for a in argv:
            if a == "--":
                break
            name = a.split("=", 1)[0]
            if a.startswith("--") and not any(o.startswith(name) for o in self._option_string_actions):
                out.append(name)
        return out

    def suggestion(self, unknown: list[str]) -> str:
        """"; did you mean --topk?" for the first unknown flag close to a declared one, else ""."""
        known = [o for o in self._option_string_actions if o.startswith("--")]
        for name in unknown:
            near = difflib.get_close_matches(name.replace("_", "-"), known, n=1, cutoff=0.6)
            if near:
                return f"; did you mean {near[0]}?"
        return ""


def _choice_hint(message: str) -> str:
    """"; did you mean 'classify'?" for argparse's "invalid choice: 'clasify' (choose from ...)"."""
    m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if not m:
        return ""
    near = difflib.get_close_matches(m.group(1), re.findall(r"'([^']*)'", m.group(2)), n=1, cutoff=0.6)
    return f"; did you mean '{near[0]}'?" if near else ""


def build_parser(only: str | None = ALL) -> argparse.ArgumentParser:
    """The parser with every command's flags; with ``only``, just that command's (None: none).

    The commands left out still appear, with their help line, in ``resnet-xray --help``.
    """
    parser = Parser(
        prog="resnet-xray",
        description="Take a torchvision ResNet apart layer by layer, then make it fast and useful.",
    )
    parser.add_argument("--version", action="version", version=f"resnet-xray {__version__}")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.help, description=c.help)
        if only == ALL or c.name == only:
            c.add_arguments()(p)
            _add_verbose(p)
    return parser


VERBOSE_HELP = "show third-party libraries' own messages (ONNX Runtime's calibration settings, torch's CUDA probe)"


def _add_verbose(p: argparse.ArgumentParser) -> None:
    """``--verbose`` after the command too (``classify x.png --verbose``), and after a picture of ``show``."""
    # SUPPRESS: left out, it must not reset a --verbose given before the command
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_verbose(child)


def chosen_command(argv: list[str]) -> str | None:
    """The subcommand in ``argv``: the first word that is not a top-level option."""
    names = {c.name for c in COMMANDS}
    for a in argv:
        if not a.startswith("-"):
            return a if a in names else None
    return None


def flag_for(parser: argparse.ArgumentParser, args: argparse.Namespace, option: str) -> str:
    """The flag a user typed for options-dataclass field ``option`` (``topk`` -> ``--topk``)."""
    flags = getattr(args, "option_flags", {}) or {}
    if option in flags:
        return flags[option]
    for p in _subparsers(parser, args):
        for action in p._actions:
            if action.dest == option and action.option_strings:
                return max(action.option_strings, key=len)
    return "--" + option.replace("_", "-")


def _subparsers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[argparse.ArgumentParser]:
    """The parsers on the way to the chosen (sub)command, innermost first."""
    chain = [parser]
    for dest in ("command", "picture"):
        name = getattr(args, dest, None)
        for action in chain[-1]._actions:
            if isinstance(action, argparse._SubParsersAction) and name in action.choices:
                chain.append(action.choices[name])
    return chain[::-1]


def refuse_empty_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 naming the flag for ``--flag=--``: CPython 3.11's argparse stores [] there, unconverted.

    Every command would otherwise meet a list where it expects a number (a TypeError traceback).
    """
    for p in _subparsers(parser, args):
        for a in p._actions:
            if isinstance(a, argparse._StoreAction) and a.option_strings and a.nargs is None \
                    and isinstance(getattr(args, a.dest, None), list):
                p.error(f"argument {'/'.join(a.option_strings)}: expected one value")


def main(argv: list[str] | None = None) -> int:
    from .quiet import hide_known_log_noise, verbose_mode

    argv = sys.argv[1:] if argv is None else list(argv)
    hide_known_log_noise()
    parser = build_parser(chosen_command(argv))
    args, extras = parser.parse_known_args(argv)
    if extras:  # refused by the (sub)command that was typed, with its usage and the nearest flag
        inner = _subparsers(parser, args)[0]
        inner.error(f"unrecognized arguments: {' '.join(extras)}")
    refuse_empty_values(parser, args)
    _one_line_warnings()
    try:
        with verbose_mode(args.verbose):
            if getattr(args, "json", False):
                from .cliutil import json_output

                with json_output():
                    return int(args.func(args) or 0)
            return int(args.func(args) or 0)
    except OptionError as e:
        print(f"resnet-xray: error: {e.with_flag(flag_for(parser, args, e.option))}", file=sys.stderr)
        return e.exit_code
    except XrayError as e:
        print(f"resnet-xray: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("resnet-xray: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `resnet-xray anatomy | head` closed the pipe early; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _one_line_warnings() -> None:
    """The library's own warnings (:class:`~resnet_xray.errors.XrayWarning`) as one ``resnet-xray: warning:`` line each."""
    import warnings

    from .errors import XrayWarning

    shown = warnings.showwarning
    if getattr(shown, "one_line", False):  # installed by an earlier main() in this process: wrapping again would nest
        return

    def show(message: Any, category: type, *a: Any, **k: Any) -> None:
        if issubclass(category, XrayWarning):
            print(f"resnet-xray: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, *a, **k)

    show.one_line = True  # type: ignore[attr-defined]
    warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())
