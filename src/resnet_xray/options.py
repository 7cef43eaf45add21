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
