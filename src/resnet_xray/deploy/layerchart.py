"""The per-layer chart: time on each engine and error against the reference, along the network."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_path


def save_layers_chart(result: Any, path: str | os.PathLike) -> Path:
    """Draw ``result`` (a :class:`~resnet_xray.deploy.layers.LayersResult`) to a PNG: times above, errors below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.rows if r.kind != "other"]  # network order, whatever the table's sort
    names = [r.name for r in rows]
    has_err = any(r.error for r in rows)
    fig, axes = plt.subplots(2 if has_err else 1, 1, figsize=(max(8, 0.32 * len(rows)), 7 if has_err else 4.5),
                             sharex=True, squeeze=False)
    ax = axes[0][0]
    for key in result.keys:
        ax.plot(range(len(rows)), [r.times_ms.get(key, float("nan")) for r in rows], marker="o", ms=3,
                ls="-" if result.keys[key] == "model" else "--", label=f"{key} ({result.end_to_end_ms[key]:.1f} ms end to end)")
    ax.set_ylabel("ms per image")
    ax.set_title(f"{Path(result.model).name}: time per layer" + (f" vs {Path(result.reference).name}" if result.reference else ""))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if has_err:
        ax = axes[1][0]
        ax.semilogy(range(len(rows)), [(r.error or {}).get("rel_l2", float("nan")) for r in rows], marker="o", ms=3, color="C3")
        ax.set_ylabel(f"relative L2 error\n({result.error_engine}, {result.images} image(s))")
        ax.grid(alpha=0.3, which="both")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out
