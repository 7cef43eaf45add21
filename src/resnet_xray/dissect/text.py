"""Plain-text and CSV renderings of an :class:`~resnet_xray.dissect.Anatomy`."""

from __future__ import annotations

import csv
import io

from ..units import pct, si, table
from . import Anatomy


def _hw(v: tuple[int, int] | None) -> str:
    return "" if v is None else (f"{v[0]}" if v[0] == v[1] else f"{v[0]}x{v[1]}")


def layers_text(a: Anatomy) -> str:
    rows = [
        [
            r.name, r.type, "" if r.kernel is None else f"{r.kernel[0]}x{r.kernel[1]}", _hw(r.stride), _hw(r.padding), r.groups or "", r.in_channels or "", r.out_channels or "",
            "x".join(map(str, r.output_shape)), f"{r.params:,}", f"{r.macs:,}", r.receptive_field, r.jump,
        ]
        for r in a.layers
    ]
    head = ["layer", "type", "kernel", "stride", "pad", "groups", "in", "out", "output", "params", "macs*", "RF", "jump"]
    return table(head, rows, "llrrrrrrrrrrr")


def stages_text(a: Anatomy) -> str:
    rows = [
        [s.name, f"{s.output_size}x{s.output_size}", s.layers, s.blocks or "", f"{s.params:,}", si(s.macs)]
        for s in a.stages
    ]
    return table(["stage", "output", "layers (He et al. 2015, Table 1)", "blocks", "params", "macs*"], rows, "lrlrrr")


def totals_text(a: Anatomy) -> str:
    t = a.totals
    return "\n".join([
        f"parameters            {t.params:,} ({si(t.params)})",
        f"multiply-adds (MACs)  {t.macs:,} ({si(t.macs)} MACs, conv + fc, at {a.input_size}x{a.input_size})",
        f"FLOPs                 {t.flops:,} ({si(t.flops)}FLOPs, counting a multiply-add as 2)",
        f"element ops           {t.elementwise_ops:,} ({si(t.elementwise_ops)}: bn, relu, add, pooling; not in MACs)",
        f"depth                 {t.weighted_layers} weighted layers = {t.main_path_convs} main-path convs + {t.fc_layers} fc"
        f"; plus {t.shortcut_convs} projection-shortcut convs = {t.conv_modules} Conv2d modules",
    ])


def breakdown_text(a: Anatomy) -> str:
    by_type = [
        [k, f"{v.params:,}", pct(v.params_share), f"{v.macs:,}", pct(v.macs_share, 2)]
        for k, v in a.breakdown.by_type.items()
    ]
    by_stage = [
        [k, f"{v.params:,}", pct(v.params_share), f"{v.macs:,}", pct(v.macs_share, 2)]
        for k, v in a.breakdown.by_stage.items()
    ]
    head = ["type", "params", "share", "macs*", "share"]
    return "\n\n".join([
        "By layer type:\n" + table(head, by_type),
        "By stage:\n" + table(["stage"] + head[1:], by_stage),
    ])


NOTE = ("* macs: multiply-accumulates for conv and fc rows; element operations for bn, relu, add "
        "and pooling rows. Shares of macs are shares of all counted operations.")


def size_text(a: Anatomy) -> str:
    """"96x96 input (the model's crop; --input-size to change)": said wherever MACs are."""
    why = {"the model's crop": "the crop its preprocessing declares", "default": "the ImageNet size"}.get(a.input_size_from)
    return f"{a.input_size}x{a.input_size} input" + (f" ({why}; --input-size to change)" if why else "")


def summary_text(a: Anatomy) -> str:
    return "\n\n".join([
        f"{a.arch} at {size_text(a)}",
        stages_text(a),
        totals_text(a),
        breakdown_text(a),
        NOTE.replace("* macs:", f"* macs at {a.input_size}x{a.input_size}:"),
    ])


def full_text(a: Anatomy) -> str:
    return "\n\n".join([layers_text(a), summary_text(a)])


def layers_csv(a: Anatomy) -> str:
    buf = io.StringIO()
    fields = list(a.layers[0].to_dict()) if a.layers else []
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in a.layers:
        d = r.to_dict()
        for k in ("kernel", "stride", "padding", "output_shape"):
            d[k] = "" if d[k] is None else "x".join(map(str, d[k]))
        w.writerow(d)
    return buf.getvalue()
