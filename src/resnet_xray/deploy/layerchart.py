"""The per-layer table as a document: read back from ``layers --json``, and drawn along the network.

The report and the explorer show a table that ``layers`` measured earlier; they read it from the
JSON file, so this module works on that plain form, never on the live result.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from ..errors import XrayError


def read_layers_doc(path: str | os.PathLike, flag: str) -> dict[str, Any]:
    """The JSON ``resnet-xray layers --json`` printed, checked for what the report and the explorer read; one line if not."""
    p = Path(path)
    what = "not the JSON `resnet-xray layers --json` prints"
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise XrayError(f"{flag} {p}: no such file") from None
    except IsADirectoryError:
        raise XrayError(f"{flag} {p}: is a folder; pass the file `resnet-xray layers --json` wrote") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise XrayError(f"{flag} {p}: {what} ({getattr(e, 'strerror', None) or type(e).__name__})") from None
    rows = doc.get("rows") if isinstance(doc, dict) else None
    ok = (isinstance(rows, list) and rows and isinstance(doc.get("end_to_end_ms"), dict) and isinstance(doc.get("keys"), dict)
          and all(isinstance(r, dict) and isinstance(r.get("name"), str) and isinstance(r.get("times_ms"), dict) for r in rows))
    if not ok:
        raise XrayError(f"{flag} {p}: {what} (no rows with a name and times_ms, or no end_to_end_ms and keys)")
    return doc


def network_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows in execution order, whatever ``--sort`` the table was printed with."""
    return sorted(doc["rows"], key=lambda r: r.get("index", 0))


def layers_figure(doc: dict[str, Any]) -> Any:
    """Times on each engine above, the error against the reference below, along the network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in network_rows(doc) if r.get("kind") != "other"]
    names = [r["name"] for r in rows]
    has_err = any(r.get("error") for r in rows)
    fig, axes = plt.subplots(2 if has_err else 1, 1, figsize=(max(8, 0.32 * len(rows)), 7 if has_err else 4.5),
                             sharex=True, squeeze=False)
    ax = axes[0][0]
    for key, who in doc["keys"].items():
        e2e = doc["end_to_end_ms"].get(key)
        ax.plot(range(len(rows)), [r["times_ms"].get(key, float("nan")) for r in rows], marker="o", ms=3,
                ls="-" if who == "model" else "--", label=f"{key} ({e2e:.1f} ms end to end)" if e2e else key)
    ax.set_ylabel("ms per image")
    ref = doc.get("reference")
    ax.set_title(f"{Path(str(doc.get('model'))).name}: time per layer" + (f" vs {Path(ref).name}" if ref else ""))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if has_err:
        ax = axes[1][0]
        ax.semilogy(range(len(rows)), [(r.get("error") or {}).get("rel_l2") or float("nan") for r in rows], marker="o", ms=3,
                    color="C3")
        ax.set_ylabel(f"relative L2 error\n({doc.get('error_engine')}, {doc.get('images')} image(s))")
        ax.grid(alpha=0.3, which="both")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    fig.tight_layout()
    return fig


def save_layers_chart(doc: dict[str, Any], path: str | os.PathLike) -> Path:
    """Draw ``doc`` (``LayersResult.to_dict()``) to a PNG."""
    import matplotlib.pyplot as plt

    fig = layers_figure(doc)
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out
