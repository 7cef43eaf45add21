"""How numbers are written for people: 25.56 M, 4.09 G, 8.0%, 1/60.7, none of the 5 blocks."""

from __future__ import annotations

import math
from decimal import Decimal


def si(n: float, digits: int = 2) -> str:
    """Decimal SI prefix (k, M, G): 4089184256 -> '4.09 G'."""
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.{digits}f} {unit}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.{digits}f}"


def pct(x: float, digits: int = 1) -> str:
    """A share in [0, 1] as a percentage, keeping small non-zero shares visible."""
    if 0 < x * 100 < 10 ** -digits:
        return f"{x * 100:.{digits + 2}f}%"
    return f"{x * 100:.{digits}f}%"


def num(x: float, digits: int = 3) -> str:
    """``x`` to ``digits`` significant figures, never in e-notation: 5.4e-05 -> '0.000054', 1.2e+06 -> '1,200,000'."""
    if not math.isfinite(x) or x == 0:
        return f"{x:g}"
    d = Decimal(f"{x:.{digits}g}")
    return f"{int(d):,}" if abs(d) >= 1000 else format(d, "f")


def times(r: float, of: str = "") -> str:
    """A ratio as a sentence says it: '1.94x ResNet's', '62% of ResNet's', '1/1,020 of ResNet's'.

    Never '0.000976x': below 1 a ratio reads as a percentage, and below 0.1 as one part in N.
    ``of`` names what it is a ratio of; without it: '1.94x', '62%', '1/60.7'.
    """
    tail = f" {of}" if of else ""
    if not math.isfinite(r) or r <= 0 or r >= 1:
        return f"{num(r)}x{tail}"
    if r >= 0.1:
        return f"{r * 100:.3g}%" + (f" of{tail}" if of else "")
    return f"1/{num(1 / r)}" + (f" of{tail}" if of else "")


def below(x: float) -> str:
    """A small non-negative difference as its power-of-ten bound: 9.8e-08 -> 'less than 1/10,000,000'.

    For differences a learner only needs to see are negligible; 1e-3 and above keep their digits.
    """
    if x == 0:
        return "0"
    if not math.isfinite(x) or x >= 1e-3:
        return num(x, 2)
    k = -math.ceil(math.log10(x))  # 10**-k is the smallest power of ten at or above x
    return f"{'' if x == 10.0 ** -k else 'less than '}1/{10 ** k:,}"


def of_count(k: int, n: int, noun: str) -> str:
    """How many of ``n`` things, said plainly: 'none of the 5 identity blocks', 'all 5 …', '2 of the 5 …'."""
    if n == 0:
        return f"no {noun}"
    if k == 0:
        return f"none of the {n} {noun}"
    if k == n:
        return f"both {noun}" if n == 2 else f"all {n} {noun}" if n > 2 else f"1 of 1 {noun}"
    return f"{k} of the {n} {noun}"


def count_of(k: int, singular: str, plural: str | None = None) -> str:
    """A count with its noun, zero said plainly: 'no colour-opponent filters', '1 filter', '12 filters'."""
    plural = plural or singular + "s"
    return f"no {plural}" if k == 0 else f"1 {singular}" if k == 1 else f"{k:,} {plural}"


def table(header: list[str], rows: list[list[object]], align: str | None = None) -> str:
    """A plain monospaced table; ``align`` is one 'l' or 'r' per column (default: first left)."""
    cells = [[str(c) for c in header]] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    align = align or "l" + "r" * (len(header) - 1)
    lines = []
    for k, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
