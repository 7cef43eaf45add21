"""Render the report's data and pictures into one self-contained HTML page.

CSS and JavaScript are inlined from the files beside this module and every
picture is a data URI, so the page needs no server and no network.
"""

from __future__ import annotations

import json
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from ..units import below, count_of, num, of_count, pct, si
from ..viz.cam import format_prob
from .sections import SECTIONS

# He et al.'s stage names beside torchvision's module names (Table 1 counts the max pool into conv2_x).
STAGE_LABELS = {"conv1": "stem (conv1)", "conv2_x": "conv2_x: max pool + layer1", "conv3_x": "conv3_x: layer2",
                "conv4_x": "conv4_x: layer3", "conv5_x": "conv5_x: layer4", "pool_fc": "pool + fc"}


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _img(src: str, alt: str, cls: str = "") -> str:
    cls_attr = f' class="{cls}"' if cls else ""
    return f'<img src="{src}" alt="{escape(alt)}"{cls_attr}>'


def _table(head: list[str], rows: list[list[Any]], cls: str = "", left: tuple[int, ...] = (0,)) -> str:
    """Numbers align right; the columns in ``left`` hold words and align left."""

    def cell(tag: str, i: int, c: Any) -> str:
        return f'<{tag} class="l">{c}</{tag}>' if i in left else f"<{tag}>{c}</{tag}>"

    th = "".join(cell("th", i, escape(str(h))) for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def _shape(s) -> str:
    return "×".join(map(str, s)) if s else ""


def _num(v: float | None, fmt: str = ".3g") -> str:
    return "n/a" if v is None else format(v, fmt)


def _bar(share: float) -> str:
    w = max(0.0, min(1.0, share)) * 100
    return f'<span class="bar"><span style="width:{w:.2f}%"></span></span> {pct(share, 2)}'


def section(sid: str, title: str, body: str, lead: str = "") -> str:
    lead_html = f'<p class="lead">{lead}</p>' if lead else ""
    return f'<section id="{sid}"><h2>{escape(title)}</h2>{lead_html}{body}</section>'


def _fig(src: str, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure class="sec-fig">{_img(src, alt, "fig")}{cap}</figure>'


def _trained_word(trained: Any) -> str:
    return {True: "trained", False: "NOT trained"}.get(trained, "not known to be trained")  # type: ignore[call-overload]


def interp(text: str) -> str:
    """An interpretive caption (what features *mean*): only ever rendered for trained weights."""
    return f'<p class="interp">{text}</p>'


def render_html(doc: dict[str, Any], pics: dict[str, Any]) -> str:
    """The whole page as one string; ``doc`` is the JSON document, ``pics`` the data URIs."""
    model = doc["model"]
    renderers = {
        "input": _input, "kernel": _kernel, "channels": _channels, "conv1": _conv1, "bottleneck": _walkthrough,
        "shortcuts": _shortcuts, "stages": _stages, "residual": _residual, "gradflow": _gradflow, "cost": _cost,
        "deployed": _deployed, "cam": _cam, "conclusion": _conclusion,
    }
    titles = dict(SECTIONS)
    chosen = doc["sections"]
    sections, links = [], []
    for n, sid in enumerate(chosen, 1):
        body = renderers[sid](doc, pics)
        if not body:
            continue
        sections.append(body.replace("<h2>", f"<h2>{n}. ", 1))
        links.append(f'<a href="#{sid}">{n}. {escape(titles[sid])}</a>')
    w = doc["weights"]
    trained = w.get("trained", w["pretrained"])  # older report.json documents have only "pretrained"
    warning = f'<p class="prov">Weights trained: {escape(w.get("trained_evidence") or "yes")}.</p>' if trained is True else (
        f'<p class="warn">{escape(w["warning"] or "")} The labels, kernels and maps below show '
        f'{"an untrained network" if trained is False else "a network not known to be trained"}, '
        "not what training learns; no section interprets them.</p>")
    payload = {"layers": doc.get("layers"), "grids": pics.get("grids", {}), "kernels": pics.get("kernels", {}), "stageLabels": STAGE_LABELS}
    data_json = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/").replace("<!--", "<\\!--")
    t = doc.get("timings_s", {})
    subject = doc["subject"]
    return (
        _asset("template.html")
        .replace("{{title}}", escape(f"resnet-xray: {model['arch']} on {subject}"))
        .replace("{{css}}", _asset("report.css"))
        .replace("{{js}}", _asset("report.js"))
        .replace("{{heading}}", escape(f"{model['arch']} looks at {subject}"))
        .replace("{{subheading}}", escape(f"weights: {w['source']} ({_trained_word(trained)}) · "
                                          f"preprocessing: {doc['input']['transforms']}"))
        .replace("{{warning}}", warning)
        .replace("{{toc}}", "".join(links))
        .replace("{{sections}}", "\n".join(sections))
        .replace("{{footer}}", escape(f"Generated by resnet-xray in {t.get('total_before_write', 0):.1f} s with weights {w['source']}. "
                                      "Every number and picture was computed from this model and this image; report.json beside "
                                      "this file holds all of them."))
        .replace("{{data}}", data_json)
    )


def _rgb(v: list[float], fmt: str = ".2f") -> str:
    return ", ".join(f"{c} {x:{fmt}}" for c, x in zip("RGB", v))


def _input(doc: dict[str, Any], pics: dict[str, Any]) -> str:
    p = doc.get("preprocessing")
    if not p:
        return ""
    r, c, t, n = p["resize"], p["crop"], p["to_tensor"], p["normalize"]
    ow, oh = p["original_size"]
    lead = (f"The file is {ow}×{oh} pixels. Resize({r['to']}) scales its shorter side to {r['to']}: {r['size'][0]}×{r['size'][1]} "
            f"(×{r['scale']:.3f}). CenterCrop({c['to']}) keeps the middle {c['to']}×{c['to']} from x = {c['left']}, y = {c['top']}, "
            f"{pct(c['kept_share'])} of the resized pixels. ToTensor turns 0–255 into 0–1 (channel means {_rgb(t['mean'])}). "
            f"Normalize subtracts the mean ({_rgb(n['subtract'], '.3f')}) and divides by the std ({_rgb(n['divide'], '.3f')}): the channel "
            f"means become {_rgb(n['mean'], '+.2f')} "
            f"and values span [{min(n['min']):.2f}, {max(n['max']):.2f}]. This {_shape(doc['input']['tensor_shape'])} tensor is all the "
            f"network sees{'' if p['matches_pipeline'] else ' (NOTE: the step-by-step tensor differs from the pipeline’s)'}.")
    body = (f'<div class="cols3"><figure>{_img(pics["original"], "original photo")}<figcaption>The file ({ow}×{oh})</figcaption></figure>'
            f'<figure>{_img(pics["seen"], "what the network sees", "pix")}<figcaption>What the network sees, de-normalised for display'
            "</figcaption></figure></div>" + _fig(pics["preprocessing"], "preprocessing step by step"))
    return section("input", "What does the network see? Preprocessing, step by step", body, lead)


def _kernel(doc: dict[str, Any], pics: dict[str, Any]) -> str:
    k = doc.get("kernel_worked")
    if not k:
        return ""
    pc = k["per_channel"]
    lead = (f"A kernel is a small grid of weights slid across its input. conv1's filter #{k['filter']} ({k['kernel'][0]}×{k['kernel'][1]}×3, "
            f"stride {k['stride']}, padding {k['padding']}) steps {k['stride']} pixels at a time over the "
            f"{_shape(doc['input']['tensor_shape'][2:])} input and writes one number per step, a "
            f"{k['output_shape'][1]}×{k['output_shape'][2]} map. At output ({k['position'][0]}, {k['position'][1]}) it covers input rows "
            f"{k['input_rows'][0]}–{k['input_rows'][1]} and columns {k['input_cols'][0]}–{k['input_cols'][1]}: {k['terms']} products of "
            f"input × weight, summed. The R channel gives {pc[0]:+.4f}, G {pc[1]:+.4f}, B {pc[2]:+.4f}"
            f"{', bias ' + format(k['bias'], '+.4f') if k['bias'] else ''}: {k['by_hand']:+.5f} by hand; the real conv1 "
            f"output there is {k['real']:+.5f} (the two differ by {below(k['abs_diff'])}).")
    rows = [[f"{i}"] + [f"{v:+.3f}" for v in row] for i, row in enumerate(k["patch_R"])]
    wrows = [[f"{i}"] + [f"{v:+.3f}" for v in row] for i, row in enumerate(k["weights_R"])]
    head = ["row"] + [str(j) for j in range(len(k["patch_R"][0]))]
    body = (_fig(pics["kernel_worked"], "one kernel sliding over the image")
            + '<div class="cols2"><div><h3>R channel of the patch (network input values)</h3>' + _table(head, rows)
            + f"</div><div><h3>R channel of filter #{k['filter']}</h3>" + _table(head, wrows)
            + f"<p>Σ patch × weights over R = {pc[0]:+.4f} (G and B are summed the same way)</p></div></div>")
    return section("kernel", "How does a kernel work? One output value by hand", body, lead)


def _channels(doc: dict[str, Any], pics: dict[str, Any]) -> str:
    f = doc.get("fusion")
    if not f:
        return ""
    tops = ", ".join(f"#{c} ({'w = ' + format(w, '+.3f') if f['kernel'] == 1 else 'norm ' + format(nm, '.3g')})"
                     for c, w, nm in zip(f["top"], f["weights"], f["contribution_norms"]))
    lead = (f"A conv output channel is not a picture of one input channel: it is a weighted sum of all {f['in_channels']}. "
            f"Channel #{f['out_channel']} of {escape(f['layer'])} ({f['kernel']}×{f['kernel']} conv on {escape(f['input_from'])}'s output), "
            f"the most active one on this image, is drawn below as its {len(f['top'])} largest contributions, input channels {tops}, "
            f"plus the rest. Those {len(f['top'])} alone make up {pct(f['top_share'])} of the output's norm (as a partial sum). "
            f"Summed by hand, all {f['in_channels']} contributions reproduce the real output (the largest difference is "
            f"{below(f['max_abs_diff'])}).")
    return section("channels", "How do channels fuse into features?", _fig(pics["fusion"], "channel fusion"), lead)


def _conv1(doc: dict[str, Any], pics: dict[str, Any]) -> str:
    c = doc.get("conv1_kernels")
    if not c:
        return ""
    m = doc["conv1_maps"]
    zf = m.get("zero_frac")
    lead = (f"{escape(c['caption'])}. Each filter looks at one small patch of the RGB image: local perception. Beside them, the first "
            f"64 channels of {escape(m['layer'])}'s output on this image"
            + (f"; {pct(zf)} of its values are exactly zero after the ReLU." if zf is not None else "."))
    body = (_fig(pics["conv1"], "conv1 kernels") + _fig(pics["conv1_maps"], "conv1 feature maps", escape(m["caption"])))
    meas = c.get("measured")
    if meas:  # trained weights only (assemble computes it only then)
        base = meas["random_init_baseline"]
        co = meas["colour_opponent"]
        body = interp(f"conv1 kernels: {of_count(meas['oriented_edges'], meas['count'], 'filters')} look like oriented edges and "
                      f"{co or 'none'} {'is' if co == 1 else 'are'} colour-opponent, by a measured criterion "
                      f"({escape(meas['criterion'])}). A random initialisation of the same shape gives "
                      f"{count_of(base['oriented_edges'], 'oriented edge')} and "
                      f"{count_of(base['colour_opponent'], 'colour-opponent filter')}.") + body
    return section("conv1", "What do the first kernels and their feature maps look like?", body, lead)


def _shortcuts(doc: dict[str, Any], pics: dict[str, Any]) -> str:
    s = doc.get("shortcuts")
    if not s:
        return ""
    if "unavailable" in s:
        return section("shortcuts", "When channels change: shortcut option A or option B?", f"<p>{escape(s['unavailable'])}</p>")
    fit = (f"Option A’s output here is {_shape(s['a_shape'])} with norm {s['a_norm']:.2f} and per-channel spread of scales "
           f"{s['a_channel_std_spread']:.1f}× (largest/smallest channel std); its cosine with F(x) is {s['cos_a_f']:+.3f}."
           if s["a_fits"] else
           f"Option A cannot be used here on its own: without a stride its output is {_shape(s['a_shape'])}, F(x) is "
           f"{_shape(s['out_shape'])}.")
    numbers = (f"norm {s['b_norm']:.2f} against ‖F(x)‖ = {s['f_norm']:.2f}, channel-scale spread {s['b_channel_std_spread']:.1f}×, "
               f"cosine with F(x) {s['cos_b_f']:+.3f}.")
    bn = (f"Option B’s BatchNorm rescales each projected channel, as F(x)’s last BatchNorm does: {numbers}" if s.get("bn_changes_it", True)
          else f"Here that BatchNorm is still the identity map (running mean 0, variance 1, weight 1, bias 0, as at initialisation), "
               f"so options A and B give the same numbers: {numbers} Training is what makes them differ.")
    lead = (f"In {escape(s['block'])} the input has {s['in_channels']} channels ({_shape(s['in_shape'])}) and F(x) has {s['out_channels']} "
            f"({_shape(s['out_shape'])}), so x cannot be added as it is. The seed’s option A is a 1×1 conv that changes the channels "
            f"only, without BatchNorm; option B is a 1×1 conv with stride ({s['stride']} here) followed by BatchNorm, which can also "
            f"downsample. <b>torchvision uses option B</b>: {escape(s['block'])}.downsample = conv ({s['conv_params']:,} parameters) + "
            f"BatchNorm ({s['bn_params']:,}). {fit} {bn} (He et al. 2015 call the parameter-free zero-padding shortcut “option A”; the article’s A and B are "
            f"both projections.) This model has {len(s['projections'])} projection blocks "
            f"({', '.join(escape(p['block']) for p in s['projections'])}); the other {s['identity_blocks']} add x unchanged.")
    return section("shortcuts", "When channels change: shortcut option A or option B?", _fig(pics["shortcuts"], "shortcut options"), lead)


def _stages(doc: dict[str, Any], pics: dict[str, Any]) -> str:
    if "stages" not in doc:
        return ""
    a = doc["anatomy"]
    stages = [[escape(STAGE_LABELS.get(s["name"], s["name"])), f"{s['output_size']}×{s['output_size']}", escape(s["layers"]),
               s["blocks"] or "", f"{s['params']:,}", si(s["macs"])] for s in a["stages"]]
    grids = "".join(
        f'<figure>{_img(pics["stage_grids"][s["stage"]], s["layer"], "fig")}<figcaption>{escape(s["stage"])}: {escape(s["layer"])}, '
        f'output {_shape(s["shape"])}, receptive field {s["receptive_field"]} px; 64 most active channels, colour scale '
        f'[{num(s["vmin"])}, {num(s["vmax"])}]</figcaption></figure>'
        for s in doc["stages"]
    )
    nav = (
        '<div class="navigator"><div class="nav-side"><input id="layer-filter" type="search" placeholder="filter: layer3, relu, add…" '
        'aria-label="filter layers"><ul id="layer-list" role="listbox"></ul></div>'
        '<div id="layer-detail" class="nav-detail" aria-live="polite"><p>Pick a layer.</p></div></div>'
    )
    first, last = doc["stages"][0], doc["stages"][-1]
    zs = [s["zero_frac"] for s in doc["stages"] if s["zero_frac"] is not None]
    lead = (f"From the stem to the last stage the maps shrink from {first['shape'][1]}×{first['shape'][2]} to {last['shape'][1]}×"
            f"{last['shape'][2]}, the channels grow from {first['shape'][0]} to {last['shape'][0]}, and the receptive field of one "
            f"unit grows from {first['receptive_field']} to {last['receptive_field']} input pixels: each stage combines the previous "
            f"one's features over a wider area."
            + (f" The share of units switched off (exact zeros) goes {' → '.join(pct(z) for z in zs)}." if zs else ""))
    body = (_img(pics["stages"], "stage sheet", "fig")
            + f'<h3>Layer navigator: follow {escape(doc["subject"])} through every layer</h3>'
            + '<p class="note">Every operation of one forward pass, in order. Click one to see its shape, kernel, statistics on this '
              "image and a grid of its feature maps (the 64 most active channels, one colour scale per grid).</p>"
            + nav + f'<div class="cols2">{grids}</div>'
            + "<h3>Stages (He et al. 2015, Table 1, measured on this model)</h3>"
            + _table(["stage", "output", "layers", "blocks", "params", "macs*"], stages, left=(0, 2)))
    return section("stages", "How do features change from stage to stage?", body, lead)


def _residual(doc: dict[str, Any], pics: dict[str, Any]) -> str:
    if "residual" not in pics:
        return ""
    bl = doc["blocks"]
    rows = [[escape(b["name"]), "projection" if b["projection"] else "identity", _num(b["residual_norm"], ".2f"), _num(b["shortcut_norm"], ".2f"),
             _num(b["ratio"], ".3f"), _num(b["cosine"], "+.3f"), pct(b["active_frac"]) if b["active_frac"] is not None else "n/a"] for b in bl]
    ident = [b for b in bl if not b["projection"] and b["ratio"] is not None]
    lead = (f"How much each of the {len(bl)} blocks changes its input: the norm of the residual branch F(x) against the shortcut it is "
            f"added to, and the cosine between them.")
    if ident:
        small = sum(b["ratio"] < 1 for b in ident)
        median = f" (median ‖F(x)‖/‖x‖ {sorted(b['ratio'] for b in ident)[len(ident) // 2]:.2f})"
        verb = "is ‖F(x)‖" if small == 0 else "‖F(x)‖ is"  # "In none of them is F(x) smaller", "In 3 of them F(x) is smaller"
        lead += (f" In {of_count(small, len(ident), 'identity blocks')} {verb} smaller than ‖x‖{median}: "
                 + ("in every one the residual branch F(x) is the larger of the two terms." if small == 0 else
                    "in each the shortcut carries the larger of the two terms." if small == len(ident) else
                    "there the shortcut carries the larger of the two terms."))
    body = _img(pics["residual"], "residual contributions", "fig") + _table(
        ["block", "shortcut", "‖F(x)‖", "‖shortcut‖", "ratio", "cosine", "ReLU active"], rows)
    return section("residual", "How much does each block change its input?", body, lead)


def _cost(doc: dict[str, Any], pics: dict[str, Any]) -> str:
    a = doc["anatomy"]
    b = a["breakdown"]
    t = a["totals"]
    by_type = [[escape(k), f"{v['params']:,}", _bar(v["params_share"]), f"{v['macs']:,}", _bar(v["macs_share"])] for k, v in b["by_type"].items()]
    by_stage = [[escape(STAGE_LABELS.get(k, k)), f"{v['params']:,}", _bar(v["params_share"]), f"{v['macs']:,}", _bar(v["macs_share"])]
                for k, v in b["by_stage"].items()]
    head = ["", "params", "share", "macs*", "share of all ops"]
    conv, fc, bn = b["by_type"].get("conv", {}), b["by_type"].get("fc", {}), b["by_type"].get("bn", {})
    claims = [
        ["conv layers hold 99.9% of the parameters", f"{pct(conv.get('params_share', 0))} (BatchNorm {pct(bn.get('params_share', 0))})"],
        ["the fc layer holds 0.1% of the parameters", f"{pct(fc.get('params_share', 0))} ({fc.get('params', 0):,} of {t['params']:,})"],
        ["the fc layer costs 0.3% of the FLOPs", f"{pct(fc.get('macs_share', 0), 2)} ({si(fc.get('macs', 0))} of {si(t['macs'])} multiply-adds)"],
        ["49 conv + 1 fc = 50 layers", f"{t['main_path_convs']} main-path convs + {t['fc_layers']} fc; the model runs "
         f"{t['main_path_convs'] + t['shortcut_convs']} Conv2d modules ({t['shortcut_convs']} projection shortcuts)"],
        ["3.8 × 10⁹ FLOPs (He et al., multiply-adds)", f"{si(t['macs'])} multiply-adds = {si(t['flops'])}FLOPs counting a multiply-add as two"],
    ]
    lead = (f"Measured on this model at {a['input_size']}×{a['input_size']}: {t['params']:,} parameters and {si(t['macs'])} multiply-adds. "
            f"Convolutions hold {pct(conv.get('params_share', 0))} of the parameters and {pct(conv.get('macs_share', 0))} of the operations; "
            f"the fc layer holds {pct(fc.get('params_share', 0))} of the parameters but {pct(fc.get('macs_share', 0), 2)} of the operations. "
            "The seed’s figures, beside the measured ones:")
    rows = [[escape(r["name"]), r["type"], "" if r["kernel"] is None else f"{r['kernel'][0]}×{r['kernel'][1]}",
             "" if r["stride"] is None else r["stride"][0], r["in_channels"] or "", r["out_channels"] or "", _shape(r["output_shape"]),
             f"{r['params']:,}", f"{r['macs']:,}", r["receptive_field"]] for r in doc.get("layers", [])]
    body = (_fig(pics["cost"], "shares by stage") + _table(["the article says", "measured on this model"], [[escape(c), escape(m)] for c, m in claims], left=(0, 1))
            + "<h3>By layer type</h3>" + _table(head, by_type, "bars") + "<h3>By stage</h3>" + _table(head, by_stage, "bars")
            + (f"<details><summary>The full layer table: {len(rows)} operations</summary>"
               + _table(["layer", "type", "kernel", "stride", "in", "out", "output", "params", "macs*", "RF"], rows, "layers", left=(0, 1))
               + "</details>" if rows else "")
            + f'<p class="note">* {escape(a["conventions"]["macs"])}. RF: {escape(a["conventions"]["receptive_field"])}.</p>')
    return section("cost", "Where are the parameters and the FLOPs?", body, lead)


def _deployed(doc: dict[str, Any], pics: dict[str, Any]) -> str:
    """``layers``' table of a deployed model: each layer's time per engine, INT8 error, and the kernel the engine chose."""
    d = doc.get("deployed")
    if not d:
        return ""
    keys = list(d["keys"])
    model_keys = [k for k, who in d["keys"].items() if who == "model"]
    first = model_keys[0] if model_keys else keys[0]
    rows = d["rows"]
    has_err = any(r.get("error") for r in rows)
    e2e = "; ".join(f"{escape(k)} {d['end_to_end_ms'][k]:.2f} ms" for k in keys if k in d["end_to_end_ms"])
    sums = "; ".join(f"{escape(k)} {c['sum_ratio']:.0%}" for k, c in (d.get("sum_check") or {}).items() if c.get("sum_ratio"))
    lead = (f"<code>resnet-xray layers</code> profiled {escape(Path(str(d['model'])).name)}"
            + (f" against {escape(Path(str(d['reference'])).name)}" if d.get("reference") else "")
            + f" with each engine's own profiler ({escape(str((d.get('machine') or {}).get('cpu', 'this CPU')))}). End to end: {e2e}."
            + (f" The layers' times add up to {sums} of it." if sums else "")
            + " A row is a PyTorch layer, or a group an engine fuses, named after its conv; the slowest first.")

    def err(r: dict[str, Any], k: str, fmt: str) -> str:
        v = (r.get("error") or {}).get(k)
        return "" if v is None else format(v, fmt)

    speed = list(dict.fromkeys(e for r in rows for e in r.get("speedup", {})))  # engines timed on both model and reference
    head = ["layer", "MACs", *(f"{k} ms" for k in keys), *(f"{e} ×" for e in speed)]
    head += (["rel L2", "cosine"] if has_err else []) + [f"{first} kernel"]
    slowest = sorted(rows, key=lambda r: -r["times_ms"].get(first, 0.0))
    table_rows = [[escape(r["name"]), si(r["macs"]) if r.get("macs") else "", *(_num(r["times_ms"].get(k), ".3f") for k in keys),
                   *(_num(r.get("speedup", {}).get(e), ".2f") for e in speed),
                   *([err(r, "rel_l2", ".3g"), err(r, "cosine", ".5f")] if has_err else []),
                   escape(str(r.get("kernels", {}).get(first, "")))] for r in slowest]
    cols = len(head)
    body = (_fig(pics["deployed"], "time per layer on each engine, and the error against the reference, along the network",
                 escape(f"From {d['file']}.")) + _table(head, table_rows[:12], left=(0, cols - 1))
            + (f"<details><summary>Every row: {len(table_rows)}</summary>" + _table(head, table_rows, left=(0, cols - 1)) + "</details>"
               if len(table_rows) > 12 else ""))
    return section("deployed", "Where does the time go once deployed? Each layer on each engine", body, lead)


def _cam(doc: dict[str, Any], pics: dict[str, Any]) -> str:
    if "cam" not in doc:
        return ""
    c = doc["cam"]
    top = "".join(
        f'<li><span class="lbl">{escape(p["label"])} <small>#{p["index"]}</small></span>{_bar(p["prob"])}</li>' for p in doc["prediction"]
    )
    lead = (f"The top-5 classes, and where the evidence for class #{c['class_index']} “{escape(c['label'])}” "
            f"(p = {format_prob(c['prob'])}, {'the prediction' if c['predicted'] else 'requested'}) lies on "
            f"{escape(c['layer'])}'s output grid, upsampled to the input.")
    if doc["weights"].get("trained", doc["weights"]["pretrained"]) is not True:
        lead += " With weights not known to be trained these labels may be meaningless."
    body = f'<div class="cols2"><div><h3>Top-5</h3><ol class="top5">{top}</ol></div><div>{_img(pics["cam"], "Grad-CAM", "fig")}</div></div>'
    return section("cam", "What does it predict, and where does the evidence lie?", body, lead)


def _conclusion(doc: dict[str, Any], pics: dict[str, Any]) -> str:
    parts = []
    k = doc.get("kernel_worked")
    if k:
        parts.append(f"<b>Local perception (kernels).</b> One conv1 filter saw a {k['kernel'][0]}×{k['kernel'][1]} patch and {k['terms']} "
                     f"products summed to {k['by_hand']:+.4f}, which is the real output (the two differ by {below(k['abs_diff'])}).")
    f = doc.get("fusion")
    if f:
        parts.append(f"<b>Feature combination (channels).</b> Channel #{f['out_channel']} of {escape(f['layer'])} mixed all "
                     f"{f['in_channels']} input channels; the top {len(f['top'])} made {pct(f['top_share'])} of its norm.")
    st = doc.get("stages")
    if st:
        parts.append(f"<b>Hierarchical abstraction (layers).</b> The receptive field grew from {st[0]['receptive_field']} to "
                     f"{st[-1]['receptive_field']} pixels while the map went from {_shape(st[0]['shape'])} to {_shape(st[-1]['shape'])}.")
    bl = doc.get("blocks") or []
    if bl:
        ident = [b["ratio"] for b in bl if not b["projection"] and b["ratio"] is not None]
        if ident:
            carried = sum(r < 1 for r in ident)
            parts.append(f"<b>Residuals.</b> The identity path carried the larger term in {of_count(carried, len(ident), 'identity blocks')}"
                         + (": in every one the residual branch F(x) outweighed it." if carried == 0 else "."))
    g = doc.get("gradflow")
    if g and g.get("summary"):
        parts.append(f"<b>Gradients.</b> {escape(g['summary'])}")
    p = doc["prediction"][0]
    w = doc["weights"]
    parts.append(f"<b>Output.</b> Top-1: #{p['index']} {escape(p['label'])} at {format_prob(p['prob'])}"
                 + ("." if w.get("trained", w["pretrained"]) is True else " — with weights not known to be trained, a meaningless label."))
    a = doc["anatomy"]["totals"]
    parts.append(f"All of it cost {si(a['macs'])} multiply-adds and {a['params']:,} parameters for one {doc['subject']}.")
    fig = _fig(pics["conclusion"], "hierarchy per stage") if "conclusion" in pics else ""
    return section("conclusion", "Conclusion: kernels, channels and layers on this image", fig + "".join(f"<p>{x}</p>" for x in parts))


def _explanation(text: str) -> str:
    """The trace package's explanation: a heading line, then "- " bullets (indented lines continue one)."""
    lines = text.splitlines()
    items: list[str] = []
    for line in lines[1:]:
        if line.startswith("- "):
            items.append(line[2:])
        elif items and line.strip():
            items[-1] += " " + line.strip()
    lis = "".join(f"<li>{escape(i)}</li>" for i in items)
    return f"<p><b>{escape(lines[0] if lines else '')}</b></p><ul>{lis}</ul>"


def _gradflow(doc: dict[str, Any], pics: dict[str, Any]) -> str:
    if "gradflow" not in doc:
        return ""
    g = doc["gradflow"]
    o = g["options"]
    expl = "".join(_explanation(t) for phase in ("init", "trained") for t in g.get("explanations", {}).get(phase, {}).values())
    lead = (f"The article's residual argument, measured rather than asserted: {escape(o['arch'])} against the same network with every "
            f"shortcut add removed (plain), at initialisation ({escape(o['weights'])} weights, seed {o['seed']}), on a batch of "
            f"{o['batch_size']} synthetic {o['input_size']}×{o['input_size']} images, in both BatchNorm regimes. "
            f"<code>resnet-xray gradflow</code> runs the full-size measurement. {escape(g.get('summary', ''))}")
    return section("gradflow", "Why do residual connections help? Gradient flow", _img(pics["gradflow"], "gradient flow", "fig") + expl, lead)


def _walkthrough(doc: dict[str, Any], pics: dict[str, Any]) -> str:
    w = doc.get("walkthrough")
    if not w:
        return ""
    title = "What does one bottleneck block do, step by step?"
    if "unavailable" in w:
        return section("bottleneck", title, f"<p>{escape(w['unavailable'])}</p>")
    rows = [[escape(s["name"]), escape(s["what"]), _shape(s["in_shape"]), _shape(s["out_shape"]), f"{s['params']:,}", f"{s['macs']:,}",
             _num(s["l2"], ".2f"), "" if s["zero_frac"] is None else pct(s["zero_frac"]), escape(s["role"])] for s in w["steps"]]
    why = "".join(f"<p>{escape(p)}</p>" for part in w["text"].split("\n\n")[2:] for p in part.split("\n") if p.strip())
    body = _fig(pics["walkthrough"], "block walkthrough") + _table(["step", "operation", "input", "output", "params", "MACs", "‖out‖", "zeros", "why"], rows, left=(0, 1, 8)) + f'<div class="why">{why}</div>'
    lead = escape(f"{w['block']} ({w['kind']}): {w['in_channels']} channels in, {w['out_channels']} out, stride {w['stride']}, "
                  f"{w['shortcut']} shortcut. Every shape and norm below was read from the one traced forward pass of this image.")
    return section("bottleneck", title, body, lead)
