"""Validation for the options dataclasses: one place, errors that name the option.

Each ``*Options`` dataclass checks its own fields in ``__post_init__`` with these
helpers, so the Python API and the CLI refuse the same values with the same words.
Out-of-range values are refused, never clamped. The error names the dataclass field;
the CLI rewrites that name as the flag the user typed (``topk`` -> ``--topk``).
"""

from __future__ import annotations

from typing import Any

from .errors import XrayError


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


# --- flags generated from the dataclass: field -> --field-name, its type, default and comment ---


def field_comments(cls: type) -> dict[str, str]:
    """The ``# comment`` after each field of a dataclass, which is its help text."""
    import inspect
    import re

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):  # no source (frozen app): flags still work, without help
        return {}
    found = {}
    for line in src.splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if m:
            found[m.group(1)] = m.group(2).strip()
    return found


def add_flags(parser: Any, cls: type, names: tuple[str, ...], *, help: dict[str, str] | None = None) -> None:
    """Add ``--name`` for each listed field of options dataclass ``cls``: type, default and help from the field."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    comments = field_comments(cls)
    for name in names:
        f = fields[name]
        kinds = [a for a in typing.get_args(hints[name]) if a is not type(None)] or [hints[name]]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        text = (help or {}).get(name) or comments.get(name, "")
        flag = "--" + name.replace("_", "-")
        if kinds[0] is bool:
            if default:
                raise ValueError(f"{cls.__name__}.{name} defaults to True: name a --no- flag by hand")
            parser.add_argument(flag, dest=name, action="store_true", help=text)
        else:
            parser.add_argument(flag, dest=name, type=kinds[0], default=default, help=f"{text} (default: {default})")


def from_args(cls: type, args: Any, names: tuple[str, ...], **extra: Any) -> Any:
    """Build options dataclass ``cls`` from the parsed flags ``names`` (it validates itself)."""
    return cls(**{n: getattr(args, n) for n in names}, **extra)
