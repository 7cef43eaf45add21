"""The explorer's JSON documents, built from the workspace: one function per panel of the page.

Pictures are not in them: each document names the URLs of its pictures, and the page asks
for a picture only when it shows it. Every label and file name goes out as plain data; the
page writes it with ``textContent``, never as markup.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..deploy.layerchart import network_rows
from ..dissect import LayerRow
from ..pruning.kept import pruned_channels
from ..tracing import LayerStats
from ..viz.cam import CamResult, format_prob
from .pictures import GRID_CHANNELS, channel_strengths, feeding_conv, receptive_box
from .workspace import STAGES, Photo, Run, Slot, Workspace

MAX_LISTED_CHANNELS = 512  # channel strengths listed for one op (layer4 has 2048; the grid shows 64)
SHOWN_REMOVED = 8  # removed channel indices written out in a layer's one-line summary; the doc lists all
NOT_RECORDED = ("which channels were removed is not recorded in this checkpoint "
                "(pruned before resnet-xray recorded channel identities)")
EXPORTED_CAM = "CAM from the exported layer4 output (no gradients)"
NO_CAM = ("a compiled artefact gives only its logits here: its CAM needs a file exported with "
          "resnet-xray export --cam-output")
LAYER_NOT_RECORDED = ("which channels were removed is not recorded for this layer: when it was pruned, its channels "
                      "had identical BatchNorm parameters (as in an untrained model) and could not be told apart")


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def model_doc(s: Slot) -> dict[str, Any]:
    w = s.weights
    return {"key": s.key, "role": s.role, "arch": s.model.arch, "source": w.source, "deployed": s.deployed,
            "classes": len(s.model.class_names), "crop": s.model.meta.preprocessing.crop,
            "weights": w.to_dict(), "warning": w.warning, "known_trained": w.known_trained}


def session_doc(ws: Workspace) -> dict[str, Any]:
    return {"models": [model_doc(s) for s in ws.slots],
            "photos": [{"key": p.key, "name": p.name, "size": list(p.size)} for p in ws.photos.values()],
            "stages": list(STAGES), "max_upload_bytes": ws.options.max_upload_mb * 10**6, "topk": ws.options.topk,
            "tables": len(ws.tables)}


def tables_doc(ws: Workspace) -> dict[str, Any]:
    """The per-layer tables of deployed models, rows in network order, with what the page needs to read them."""
    keep = ("model", "reference", "keys", "end_to_end_ms", "sum_check", "error_engine", "images")
    return {"tables": [{**{k: t.get(k) for k in keep}, "file": Path(t["file"]).name, "cpu": (t.get("machine") or {}).get("cpu"),
                        "rows": network_rows(t)} for t in ws.tables]}


def input_doc(ws: Workspace, slot: Slot, photo: Photo) -> dict[str, Any]:
    """The preprocessing, step by step: the file, Resize, CenterCrop, and the normalised channels the network sees."""
    pp = slot.model.meta.preprocessing
    prep = ws.prepared(slot, photo)
    x = prep.x[0].double()
    pixels = x * torch.tensor(pp.std, dtype=torch.float64).view(3, 1, 1) + torch.tensor(pp.mean, dtype=torch.float64).view(3, 1, 1)
    base = f"/api/m/{slot.key}/p/{photo.key}/input"
    return {"photo": {"key": photo.key, "name": photo.name, "size": list(photo.size), "url": f"/api/photos/{photo.key}/thumb.png"},
            "source": pp.source, "resize": {"to": pp.resize, "size": list(prep.resized.size), "interpolation": pp.interpolation,
                                             "url": f"{base}/resized.png"},
            "crop": {"left": prep.crop_box[0], "top": prep.crop_box[1], "side": prep.crop_box[2], "url": f"{base}/crop.png"},
            "pixel_mean": pixels.flatten(1).mean(1).tolist(),
            "normalize": {"mean": list(pp.mean), "std": list(pp.std), "channels": [
                {"name": n, "mean": float(x[i].mean()), "min": float(x[i].min()), "max": float(x[i].max()),
                 "url": f"{base}/{n}.png"} for i, n in enumerate("RGB")]},
            "lim": float(x.abs().max())}


def topk(slot: Slot, run: Run, k: int) -> list[dict[str, Any]]:
    p, idx = torch.topk(run.probs, min(k, run.probs.numel()))
    names = slot.model.class_names
    return [{"index": int(i), "label": names[int(i)] if int(i) < len(names) else f"class_{int(i)}", "prob": float(v)}
            for v, i in zip(p, idx)]


def _place(name: str) -> tuple[str, str]:
    """(stage, block) of an op: ``layer2.1.conv2`` -> (layer2, layer2.1); the stem and the head are one block each."""
    parts = name.split(".")
    if parts[0].startswith("layer") and parts[0][5:].isdigit():
        return parts[0], ".".join(parts[:2])
    if parts[0] in ("avgpool", "flatten", "fc"):
        return "head", "head"
    return "stem", "stem"


def _op(row: LayerRow, total_macs: int, st: LayerStats | None) -> dict[str, Any]:
    return {"name": row.name, "type": row.type, "shape": list(row.output_shape), "rf": row.receptive_field,
            "jump": row.jump, "macs": row.macs, "macs_share": row.macs / total_macs if total_macs else 0.0,
            "params": row.params, "spatial": len(row.output_shape) == 3 and row.output_shape[-1] > 1,
            "mean": _num(st.mean) if st else None, "max": _num(st.max) if st else None,
            "zero_frac": _num(st.zero_frac) if st else None}


def overview_doc(ws: Workspace, slot: Slot, photo: Photo) -> dict[str, Any]:
    """The top-k and the layer map: every traced op, grouped by stage and block, with its numbers."""
    run = ws.summary(slot, photo)
    doc = {"model": slot.key, "photo": photo.key, "topk": topk(slot, run, ws.options.topk), "seconds": run.seconds,
           "input_shape": list(run.x.shape), "groups": [],
           "note": "a compiled artefact: only its output can be seen, not its layers" if slot.deployed else None}
    if slot.deployed:
        return doc
    total = sum(r.macs for r in slot.rows.values())
    blocks = {b.name: b for b in run.trace.blocks}
    stats = {r.name: r for r in run.trace.layers}
    groups: dict[str, dict[str, Any]] = {}
    for name in slot.order:
        if name not in slot.rows:
            continue
        stage, block = _place(name)
        g = groups.setdefault(stage, {"stage": stage, "blocks": {}})
        b = g["blocks"].setdefault(block, {"name": block, "ops": []})
        if block in blocks:
            bs = blocks[block]
            b.update(ratio=_num(bs.ratio), cosine=_num(bs.cosine), projection=bs.projection, active=_num(bs.active_frac))
        b["ops"].append(_op(slot.rows[name], total, stats.get(name)))
    doc["groups"] = [{"stage": g["stage"], "blocks": list(g["blocks"].values())} for g in groups.values()]
    return doc


def layer_doc(ws: Workspace, slot: Slot, photo: Photo, name: str) -> dict[str, Any]:
    """One op's output: its channels sorted by mean activation, and the grid of the strongest."""
    row = slot.rows[name]
    fmap = ws.run(slot, photo).fmap(name)
    order, means, maxes = channel_strengths(fmap if fmap.dim() == 3 else fmap.reshape(-1, 1, 1))
    listed = [{"c": c, "mean": float(means[c]), "max": float(maxes[c])} for c in order[:MAX_LISTED_CHANNELS]]
    spatial = fmap.dim() == 3 and fmap.shape[-1] > 1
    shape = "x".join(map(str, row.output_shape))
    doc = {"name": name, "type": row.type, "shape": list(row.output_shape), "rf": row.receptive_field, "jump": row.jump,
           "macs": row.macs, "spatial": spatial, "channels": listed, "count": len(order),
           "caption": f"{name}: output {shape}; " + (f"the {min(GRID_CHANNELS, len(order))} channels with the highest mean "
                                                     "activation, strongest first, on one colour scale" if spatial else
                                                     "no spatial maps: the strongest values are listed")}
    if spatial:
        n = min(GRID_CHANNELS, len(order))
        cols = math.ceil(math.sqrt(n))
        doc["grid"] = {"channels": order[:n], "cols": cols, "rows": math.ceil(n / cols),
                       "url": f"/api/m/{slot.key}/p/{photo.key}/layer/{name}/grid.png"}
    if row.type == "fc":
        names = slot.model.class_names
        doc["channels"] = [dict(d, label=names[d["c"]] if d["c"] < len(names) else "") for d in listed]
    return doc


def channel_doc(ws: Workspace, slot: Slot, photo: Photo, name: str, c: int) -> dict[str, Any]:
    """One channel: where it is strongest, the input square that unit sees, and the filter slices feeding it."""
    row = slot.rows[name]
    fmap = ws.run(slot, photo).fmap(name)
    if fmap.dim() != 3 or not 0 <= c < fmap.shape[0]:
        raise KeyError(c)
    plane = fmap[c].float()
    flat = int(plane.argmax())
    y, x = divmod(flat, plane.shape[1])
    side = slot.model.meta.preprocessing.crop
    base = f"/api/m/{slot.key}/p/{photo.key}/layer/{name}/channel/{c}"
    doc = {"name": name, "channel": c, "shape": list(plane.shape), "mean": float(plane.mean()), "max": float(plane.max()),
           "min": float(plane.min()), "argmax": [y, x], "crop": side, "rf": row.receptive_field,
           "rf_box": receptive_box(row, y, x, side), "map_url": f"{base}.png", "kernels": None}
    conv = feeding_conv(list(slot.rows.values()), name)
    if conv is not None:
        doc["kernels"] = {"conv": conv, "url": f"/api/m/{slot.key}/kernel/{conv}/{c}.png",
                          "rgb_url": f"/api/m/{slot.key}/kernel/{conv}/{c}/rgb.png" if slot.rows[conv].in_channels == 3 else None,
                          "shape": [slot.rows[conv].out_channels, slot.rows[conv].in_channels, *(slot.rows[conv].kernel or ())]}
    return doc


def labels_doc(slot: Slot, q: str, limit: int = 20) -> list[dict[str, Any]]:
    """Classes whose label contains ``q`` (case-insensitive), or whose index is ``q``."""
    q = q.strip().lower()
    names = slot.model.class_names
    if q.isdigit():
        return [{"index": int(q), "label": names[int(q)]}] if int(q) < len(names) else []
    return [{"index": i, "label": n} for i, n in enumerate(names) if q and q in n.lower()][:limit]


def cam_doc(slot: Slot, photo: Photo, r: CamResult) -> dict[str, Any]:
    which = "predicted" if r.predicted else "requested"
    how = EXPORTED_CAM if slot.deployed else f"Grad-CAM on {r.layer}"
    return {"model": slot.key, "class_index": r.class_index, "label": r.label, "prob": r.prob, "predicted": r.predicted,
            "layer": r.layer, "caption": f"{how} for #{r.class_index} {r.label} ({which}, p = {format_prob(r.prob)})",
            "url": f"/api/m/{slot.key}/p/{photo.key}/cam.png?cls={r.class_index}&layer={r.layer}"}


def gradflow_doc(ws: Workspace, slot: Slot, photo: Photo) -> dict[str, Any]:
    g = ws.gradflow(slot, photo)
    return {"loss": g.loss, "blocks": {b.name: {"grad_norm": _num(b.grad_norm), "shortcut_share": _num(b.shortcut_share),
                                                "cosine": _num(b.cosine), "shortcut": b.shortcut} for b in g.blocks},
            "caption": "one backward pass from the top-1 class, BatchNorm in eval mode: the share of each block's input "
                       "gradient that arrives through the shortcut"}


def compare_doc(ws: Workspace, photo: Photo) -> dict[str, Any]:
    """Every model against the main one on ``photo``: top-1, agreement, latency and, between PyTorch models, each layer."""
    latency = ws.latency()
    eqs = ws.agreement(photo)
    main_top = int(ws.run(ws.slots[0], photo).probs.argmax())
    rows = []
    for s, eq in zip(ws.slots, eqs):
        run = ws.run(s, photo)
        top = topk(s, run, 1)[0]
        lat = latency.get(s.key)
        row = {**model_doc(s), "top1": top, "agrees": top["index"] == main_top,
               "latency_ms": lat.median_ms if lat else None, "latency_iqr_ms": lat.iqr_ms if lat else None,
               "output": None if eq is None else {"max_abs_diff": _num(eq.max_abs_diff), "kl": _num(eq.kl),
                                                  "top5_overlap": eq.top5_overlap, "summary": eq.summary()},
               "layers": None, "note": None, "pruned": pruned_doc(s)}
        if s.deployed:
            row["note"] = "compiled artefact: compared at its output only (it has no per-layer outputs)"
        elif s.key:
            same = ws.prepared(s, photo).x.shape == ws.prepared(ws.slots[0], photo).x.shape
            cmp = ws.layers_against_main(s, photo) if same else None
            row["layers"] = cmp.to_dict() if cmp else None
            if not same:
                row["note"] = "its preprocessing gives another input size: compared at the output only"
        rows.append(row)
    return {"photo": photo.key, "models": rows,
            "latency_note": "median of one forward pass of one image, the models timed round-robin in this process"}


def pruned_doc(s: Slot) -> dict[str, Any] | None:
    """For a pruned model: per BatchNorm (and the conv before it), the channels kept of the unpruned arch's, and which
    were removed; None for a model never pruned."""
    found = pruned_channels(s.model.meta)
    if found is None:
        return None
    layers, recorded = found
    out = []
    for c in layers:
        if c.removed is None:
            summary = f"kept {c.kept} of {c.width}"
        elif not c.removed:
            summary = f"kept all {c.width}"
        else:
            shown = ", ".join(map(str, c.removed[:SHOWN_REMOVED])) + (", …" if len(c.removed) > SHOWN_REMOVED else "")
            summary = f"removed {len(c.removed)} of {c.width}: {shown}"
        out.append({"name": c.name, "conv": c.conv, "width": c.width, "kept": c.kept, "removed": c.removed, "summary": summary,
                    "note": None if c.removed is not None or not recorded else LAYER_NOT_RECORDED})
    return {"recorded": recorded, "note": None if recorded else NOT_RECORDED, "layers": out}


def drift_doc(ws: Workspace, photo: Photo, class_index: int | None, layer: str) -> dict[str, Any]:
    """Each model's CAM for one class on one photo, side by side (the main model's top-1 by default): Grad-CAM for a
    PyTorch model, the file's own layer4 CAM for an artefact exported with its cam output."""
    cls = int(ws.run(ws.slots[0], photo).probs.argmax()) if class_index is None else class_index
    out = []
    for s in ws.slots:
        if not ws.has_cam(s):
            out.append({"model": s.key, "note": NO_CAM})
            continue
        out.append(cam_doc(s, photo, ws.cam(s, photo, cls, layer)))
    return {"class_index": cls, "layer": layer, "cams": out}
