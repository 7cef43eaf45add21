"""How numbers are written for people: 25.56 M, 4.09 G, 8.0%."""

from __future__ import annotations


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
