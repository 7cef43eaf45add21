"""Validation for the options dataclasses: one place, errors that name the option.

Each ``*Options`` dataclass checks its own fields in ``__post_init__`` with these
helpers, so the Python API and the CLI refuse the same values with the same words.
Out-of-range values are refused, never clamped. The error names the dataclass field;
the CLI rewrites that name as the flag the user typed (``topk`` -> ``--topk``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import XrayError
from .units import si


class OptionError(XrayError):
    """A value outside what an option allows; ``option`` is the dataclass field's name."""

    def __init__(self, option: str, value: Any, reason: str):
        self.option, self.value, self.reason = option, value, reason
        super().__init__(f"{option} {value}: {reason}")

    def with_flag(self, flag: str) -> str:
        """The one-line message with the option named as the user wrote it."""
        return f"{flag} {self.value}: {self.reason}"


def at_least(option: str, value: float | None, low: float, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value < low:
        raise OptionError(option, value, f"must be at least {low}")


def within(option: str, value: float | None, low: float, high: float, *, open_low: bool = False,
           open_high: bool = False, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    lo_ok = value is not None and (value > low if open_low else value >= low)
    hi_ok = value is not None and (value < high if open_high else value <= high)
    if not (lo_ok and hi_ok):
        lb, rb = "(" if open_low else "[", ")" if open_high else "]"
        raise OptionError(option, value, f"must lie in {lb}{low}, {high}{rb}")


def one_of(option: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise OptionError(option, value, f"choose one of: {', '.join(map(str, allowed))}")


# The seeds every RNG we feed accepts: torch.manual_seed, NumPy's default_rng (no negatives), random.
SEED_MAX = 2**32 - 1


def seed_in_range(option: str, value: int) -> None:
    within(option, value, 0, SEED_MAX)


# Any larger rate diverges at the first step; past float32's range (3.4e38) the optimizers crash.
LR_MAX = 100.0


def learning_rate(option: str, value: float | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or not 0 < value <= LR_MAX:  # NaN fails both comparisons
        raise OptionError(option, value, f"must lie in (0, {LR_MAX:g}]")


# --- upper bounds that follow from the machine: a value past them cannot run here, so it is refused ---

# The largest square side a size option takes, as the checkpoint schema bounds preprocessing: at 4096 px
# ResNet-18 (the smallest) keeps ~10 GB of activations per training image, 334x its 224 px need.
MAX_IMAGE_SIDE = 4096
# Bytes per input pixel of one image, measured on ResNet-18 (the smallest; larger ResNets need more):
INFER_BYTES_PER_PIXEL = 76  # a forward pass: the float input (12) beside the stem's 64-channel output (64)
TRAIN_BYTES_PER_PIXEL = 600  # every layer's output, kept for the backward pass (ResNet-152 keeps 9x this)


def image_side(option: str, value: int | None, low: int = 32, *, allow_none: bool = False) -> None:
    """A square input side in pixels: from ``low`` to :data:`MAX_IMAGE_SIDE`."""
    within(option, value, low, MAX_IMAGE_SIDE, allow_none=allow_none)


def check_declared_side(where: str, side: int) -> None:
    """A model file's declared input side: past :data:`MAX_IMAGE_SIDE` it is refused before any image is made that size."""
    if side > MAX_IMAGE_SIDE:
        raise XrayError(f"{where}: declares a {side}x{side} px input; at most {MAX_IMAGE_SIDE} px is supported "
                        f"(one image would hold {side * side * INFER_BYTES_PER_PIXEL / 1e9:.1f} GB of activations)")


def max_threads() -> int:
    """Threads (or worker processes) past four per logical core only queue for the same cores."""
    return 4 * (os.cpu_count() or 1)


def thread_count(option: str, value: int | None, *, low: int = 1, allow_none: bool = True) -> None:
    """Intra-op threads or loader processes: from ``low`` to :func:`max_threads`."""
    within(option, value, low, max_threads(), allow_none=allow_none)


def memory_bytes() -> int:
    """This machine's physical memory (64 GiB where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 64 << 30


def batch_fits(option: str, value: int | None, side: int | None, *, training: bool = False, allow_none: bool = False) -> None:
    """A batch size whose activations at ``side`` px (None: the smallest side, 32) fit in this machine's memory."""
    if value is None and allow_none:
        return
    at = f"at {side} px" if side else "even at the smallest input, 32 px,"
    side = side or 32
    per_image = side * side * (TRAIN_BYTES_PER_PIXEL if training else INFER_BYTES_PER_PIXEL)
    most = max(1, memory_bytes() // per_image)
    if value is None or not 1 <= value <= most:
        raise OptionError(option, value, f"must lie in [1, {most}] ({at} a larger batch's activations exceed "
                                         f"this machine's {si(memory_bytes())}B of memory)")


# --- flags generated from the dataclass: field -> --field-name, its type, default and help ---


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING) -> Any:
    """A field of an options dataclass and its help text, which its flag shows: ``topk: int = option(5, "labels per image")``."""
    return field(default=default, default_factory=factory, metadata={"help": help})


def configure(cls: type, options: Any = None, overrides: dict[str, Any] | None = None) -> Any:
    """A verb's options: ``options`` (a ``cls``, or None for the defaults) with ``overrides`` applied, validated.

    Every API verb takes ``options: XOptions | None = None, **overrides`` and starts here, so
    ``rx.classify(m, imgs, topk=3)`` and ``rx.classify(m, imgs, ClassifyOptions(topk=3))`` are one call.
    """
    if options is None:
        return cls(**(overrides or {}))
    if not isinstance(options, cls):
        raise TypeError(f"options: expected {cls.__name__}, not {type(options).__name__}")
    return dataclasses.replace(options, **overrides) if overrides else options


def _literal(text: str) -> str:
    """Help text as argparse prints it literally: it formats help with %, so "80%" would break --help."""
    return text.replace("%", "%%")


def help_of(f: dataclasses.Field) -> str:
    """The help text a field was declared with (empty for a field declared without :func:`option`)."""
    return f.metadata.get("help", "")


@dataclass(frozen=True)
class Flags:
    """Which fields of options dataclass ``cls`` are flags, and how any of them is spelled.

    Everything else (type, default, help, validation) comes from the dataclass, so a
    command declares its flags once and builds its options from the parsed arguments:

    * ``name: int = option(5, "help")`` becomes ``--name N`` with that default and help;
    * a bool defaulting to False is ``--name``; to True, ``--no-name``; to None, both;
    * a ``tuple[X, ...]`` field is one comma-separated value (``--batch 1,8``), or a
      repeatable flag when listed in ``repeat``;
    * ``choices`` lists the words a field accepts, or maps words to values
      (``--reduce-range auto|on|off`` -> None/True/False).
    """

    cls: type
    names: tuple[str, ...]
    spelling: dict[str, str | tuple[str, ...]] = field(default_factory=dict)  # field -> flag(s), when not --field-name
    choices: dict[str, tuple[Any, ...] | dict[str, Any]] = field(default_factory=dict)
    required: tuple[str, ...] = ()  # flags the command cannot run without, whatever the dataclass default
    repeat: tuple[str, ...] = ()  # tuple fields given as a repeated flag instead of one comma-separated value
    metavar: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)  # a script's own defaults (see only()); commands use the dataclass's

    def add(self, parser: Any) -> None:
        """Add one flag per listed field to ``parser`` (a parser or an argument group)."""
        fields, hints = self._fields()
        for name in self.names:
            f, kind = fields[name], hints[name]
            default = self.defaults.get(name, _default(f))
            text = help_of(f)
            kw: dict[str, Any] = {"dest": name}
            base, elem = _kind(kind)
            words = self.choices.get(name)
            if base is bool and not isinstance(words, dict):
                flags = self._flags(name, "--no-" if default is True else "--")
                if default is True:
                    text = f"turn off: {text}" if text else ""
                if default is None:
                    kw.update(action=argparse.BooleanOptionalAction, default=None)
                else:
                    kw.update(action="store_false" if default else "store_true")
                parser.add_argument(*flags, help=_literal(text), **kw)
                continue
            if isinstance(words, dict):
                shown = next((w for w, v in words.items() if v == default), default)
                kw.update(choices=tuple(words), default=shown)
            elif base is tuple:
                if name in self.repeat:
                    kw.update(action="append", default=None, type=elem, choices=words)
                    shown = ", ".join(map(str, default or ()))
                else:
                    shown = ",".join(map(str, default)) if default else default
                    kw.update(default=shown)
            else:
                kw.update(type=base, default=default, choices=words)
                shown = default
            if name in self.required:
                kw.update(required=True, default=None)
            elif shown is not None and shown != "" and "(default:" not in text:
                text = f"{text} (default: {shown})" if text else f"default: {shown}"
            flags = self._flags(name, "--")
            kw["metavar"] = self.metavar.get(name) or (None if kw.get("choices") else flags[-1].lstrip("-").upper().replace("-", "_"))
            parser.add_argument(*flags, help=_literal(text), **kw)

    def values(self, args: Any) -> dict[str, Any]:
        """The listed fields' values from parsed ``args``, converted to the dataclass's types."""
        fields, hints = self._fields()
        out = {}
        for name in self.names:
            value = getattr(args, name)
            base, elem = _kind(hints[name])
            words = self.choices.get(name)
            if isinstance(words, dict):
                value = words[value]
            elif base is tuple and value is None:
                value = _default(fields[name])
            elif base is tuple and isinstance(value, str):
                value = split_values(name, value, elem)
            elif base is tuple:
                value = tuple(value)
            out[name] = value
        return out

    def build(self, args: Any, **extra: Any) -> Any:
        """The options dataclass from parsed ``args`` (it validates itself) plus ``extra`` fields."""
        return self.cls(**self.values(args), **extra)

    def only(self, *names: str, defaults: dict[str, Any] | None = None, **spelling: str) -> Flags:
        """These fields (any of ``cls``), spelled as before unless ``spelling`` says otherwise; none required.

        For scripts (the benchmarks) that take some of a command's options under their own ``defaults``.
        """
        return dataclasses.replace(self, names=names, spelling={**self.spelling, **spelling}, required=(), defaults=defaults or {})

    def flag(self, name: str) -> str:
        """How field ``name`` is spelled on the command line."""
        return self._flags(name, "--")[-1]

    def _flags(self, name: str, prefix: str) -> tuple[str, ...]:
        spelled = self.spelling.get(name)
        if spelled is None:
            return (prefix + name.replace("_", "-"),)
        return (spelled,) if isinstance(spelled, str) else tuple(spelled)

    def _fields(self):
        return {f.name: f for f in dataclasses.fields(self.cls)}, typing.get_type_hints(self.cls)


def _default(f: dataclasses.Field) -> Any:
    """A field's default (None for a field the caller must give)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _kind(hint: Any) -> tuple[Any, Any]:
    """(base type, element type) of a field's annotation, Optional removed: ``tuple[int, ...]`` -> (tuple, int)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return tuple, (args[0] if args else str)
    if args and typing.get_origin(hint) is not None and not isinstance(args[0], type(Ellipsis)):
        return _kind(args[0])
    return hint, None


def split_values(option: str, text: str, kind: type = str) -> tuple[Any, ...]:
    """``"1,8"`` -> ``(1, 8)``: a comma-separated option value, each item converted to ``kind``."""
    try:
        return tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        noun = {int: "integers such as 1,8", float: "numbers such as 0.5,1"}.get(kind, "values")
        raise OptionError(option, text, f"expected comma-separated {noun}") from None


def fields_of(options: Any) -> dict[str, Any]:
    """An options dataclass's fields as keyword arguments (shallow: values are not copied)."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
