// resnet-xray explore: the page asks the local server, and draws what it answers.
// Every server string (labels, file names) is written with textContent, never as markup.
"use strict";

const state = { session: null, model: 0, photo: "cat", layer: null, channel: null, camClass: null, times: {}, seq: 0 };
window.__xray = { ready: false, busy: 0 };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function si(n) {
  if (n === null || n === undefined) return "";
  const units = [[1e9, "G"], [1e6, "M"], [1e3, "k"]];
  for (const [v, s] of units) if (Math.abs(n) >= v) return (n / v).toFixed(n / v >= 100 ? 0 : 1) + s;
  return String(n);
}
const pct = (v, d = 1) => (v === null || v === undefined) ? "" : (100 * v).toFixed(d) + "%";
const num = (v, d = 3) => (v === null || v === undefined) ? "–" : Number(v).toPrecision(d);
const probText = (p) => p >= 1e-4 ? pct(p, 2) : p.toExponential(2);

async function api(url, options) {
  window.__xray.busy++;
  try {
    const r = await fetch(url, options);
    const body = (r.headers.get("content-type") || "").includes("json") ? await r.json() : null;
    if (!r.ok) throw new Error((body && body.error) || `HTTP ${r.status}`);
    return body;
  } finally {
    window.__xray.busy--;
  }
}

// Runs a user action to its end (requests, then pictures): window.__xray.busy counts them for tests and benchmarks.
function act(promise) {
  window.__xray.busy++;
  return promise.catch((e) => status(e.message, true)).finally(() => { window.__xray.busy--; });
}

function status(text, isError) {
  $("status").textContent = text || "";
  $("status").classList.toggle("error", !!isError);
}

function setImage(img, url) {
  return new Promise((resolve) => {
    img.onload = img.onerror = () => resolve();
    img.src = url;
    img.hidden = false;
  });
}

function currentModel() { return state.session.models[state.model]; }

// --- start ---

async function init() {
  state.session = await api("/api/session");
  const sel = $("model-select");
  for (const m of state.session.models) {
    sel.append(el("option", { value: m.key }, `${m.key}: ${m.arch} · ${m.source || "unknown"}${m.deployed ? " (artefact)" : ""}`));
  }
  sel.addEventListener("change", () => { state.model = Number(sel.value); act(showPhoto(state.photo)); });
  for (const s of state.session.stages) $("cam-layer").append(el("option", { value: s, selected: s === "layer4" }, s));
  $("cam-layer").addEventListener("change", () => { act(showCam()); if (state.session.models.length > 1) act(showDrift()); });
  fillPhotos();
  $("photo-select").addEventListener("change", () => act(showPhoto($("photo-select").value)));
  setupUpload();
  $("label-search").addEventListener("input", searchLabels);
  $("feature-grid").addEventListener("click", gridClick);
  await act(showPhoto("cat"));
  if (state.session.tables) await act(showTables());
  window.__xray.ready = true;
}

function fillPhotos() {
  const sel = $("photo-select");
  sel.replaceChildren(...state.session.photos.map((p) => el("option", { value: p.key, selected: p.key === state.photo }, p.name)));
}

function showBanner() {
  const m = currentModel();
  $("banner").hidden = !m.warning;
  $("banner").textContent = m.warning || "";
  $("model-line").textContent = `${m.arch}, weights: ${m.source || "unknown"}, ${m.classes} classes, ${m.crop} px input`;
  $("provenance-note").textContent = m.known_trained
    ? "These weights are known to be trained: the maps show features learned from data."
    : "These weights are not known to be trained: the maps show what these filters compute, not learned features, and the labels carry no meaning.";
}

// --- one photo through the chosen model ---

async function showPhoto(key) {
  const seq = ++state.seq;
  state.photo = key;
  fillPhotos();
  showBanner();
  status("tracing…");
  const m = currentModel();
  const ov = await api(`/api/m/${m.key}/p/${key}/overview`);
  if (seq !== state.seq) return;
  renderTopk(ov.topk);
  state.camClass = ov.topk[0].index;
  renderMap(ov);
  status("");
  const jobs = [showInput(), showCam()];
  if (!m.deployed) {
    const first = state.layer && document.querySelector(`[data-layer="${CSS.escape(state.layer)}"]`) ? state.layer : "conv1";
    jobs.push(showLayer(first), fillTimes(), fillGradflow());
  } else {
    $("detail-caption").textContent = ov.note;
    $("feature-grid").hidden = true;
    $("channel-detail").hidden = true;
  }
  $("compare-panel").hidden = state.session.models.length < 2;
  if (state.session.models.length > 1) jobs.push(showCompare(), showDrift());
  await Promise.all(jobs.map((j) => j.catch((e) => status(e.message, true))));
}

async function showInput() {
  const m = currentModel();
  const d = await api(`/api/m/${m.key}/p/${state.photo}/input`);
  const [w, h] = d.resize.size;
  const box = el("div", { class: "crop-box" });
  box.style.left = `${100 * d.crop.left / w}%`;
  box.style.top = `${100 * d.crop.top / h}%`;
  box.style.width = `${100 * d.crop.side / w}%`;
  box.style.height = `${100 * d.crop.side / h}%`;
  const fig = (src, cap, cls) => el("figure", { class: cls || "" }, el("img", { src, alt: cap }), el("figcaption", {}, cap));
  const steps = [
    fig(d.photo.url, `1. the file: ${d.photo.name}, ${d.photo.size[0]}×${d.photo.size[1]}`),
    el("figure", { class: "wide" }, el("div", { class: "crop-wrap" }, el("img", { src: d.resize.url, alt: "resized" }), box),
       el("figcaption", {}, `2. Resize(${d.resize.to}), ${d.resize.interpolation}: ${w}×${h}; the centre crop in yellow`)),
    fig(d.crop.url, `3. CenterCrop(${d.crop.side}): what the network sees; RGB means ${d.pixel_mean.map((v) => v.toFixed(2)).join(", ")}`),
  ];
  d.normalize.channels.forEach((c, i) => steps.push(fig(c.url,
    `4. ${c.name}: (x − ${d.normalize.mean[i].toFixed(3)}) / ${d.normalize.std[i].toFixed(3)}; mean ${c.mean.toFixed(2)}, ` +
    `range [${c.min.toFixed(2)}, ${c.max.toFixed(2)}]; blue < 0 < red, ±${d.lim.toFixed(2)}`)));
  $("steps").replaceChildren(...steps);
}

function renderTopk(top) {
  $("topk").replaceChildren(...top.map((t) => el("li", {},
    el("button", { dataset: { cls: t.index }, "aria-pressed": "false", onclick: () => pickClass(t.index) }, `#${t.index} ${t.label}`),
    ` ${probText(t.prob)}`, (() => { const b = el("span", { class: "prob" }); b.style.width = `${Math.max(1, 120 * t.prob)}px`; return b; })())));
}

function markClass() {
  for (const b of document.querySelectorAll("#topk button, #label-results button")) {
    b.setAttribute("aria-pressed", String(Number(b.dataset.cls) === state.camClass));
  }
}

function pickClass(index) {
  state.camClass = index;
  act(showCam());
  if (state.session.models.length > 1) act(showDrift());
}

async function showCam() {
  markClass();
  const m = currentModel();
  const layer = $("cam-layer").value;
  if (m.deployed) {
    $("cam-caption").textContent = "A compiled artefact has no layers to take a Grad-CAM from; pick a PyTorch model.";
    $("cam-img").hidden = true;
    return;
  }
  $("cam-caption").textContent = "computing Grad-CAM…";
  const d = await api(`/api/m/${m.key}/p/${state.photo}/cam?cls=${state.camClass}&layer=${layer}`);
  await setImage($("cam-img"), d.url);
  $("cam-caption").textContent = `${d.caption}. Red: more evidence for the class.`;
  $("cam-figure").dataset.cls = d.class_index;
}

let searchTimer = null;
function searchLabels() {
  if (searchTimer) { clearTimeout(searchTimer); window.__xray.busy--; }
  window.__xray.busy++;  // the wait before the search counts as busy too
  searchTimer = setTimeout(() => {
    searchTimer = null;
    window.__xray.busy--;
    act((async () => {
      const q = $("label-search").value;
      const found = q.trim() ? await api(`/api/m/${state.model}/labels?q=${encodeURIComponent(q)}`) : [];
      $("label-results").replaceChildren(...found.map((t) => el("li", {},
        el("button", { dataset: { cls: t.index }, "aria-pressed": "false", onclick: () => pickClass(t.index) }, `#${t.index} ${t.label}`))));
      markClass();
    })());
  }, 150);
}

// --- the layer map ---

function renderMap(ov) {
  const map = $("layer-map");
  map.replaceChildren();
  if (!ov.groups.length) { map.append(el("p", { class: "hint" }, ov.note)); return; }
  for (const g of ov.groups) {
    const blocks = el("div", { class: "blocks" });
    for (const b of g.blocks) {
      const head = el("div", { class: "block-head" }, b.name);
      if (b.ratio !== undefined) {
        head.append(el("span", { title: "norm of the residual branch over the norm of the shortcut term" }, `‖F(x)‖/‖x‖ ${num(b.ratio, 2)}`),
                    el("span", {}, b.projection ? "projection shortcut" : "identity shortcut"),
                    el("span", { class: "grad", dataset: { block: b.name } }, ""));
      }
      const box = el("div", { class: "block", dataset: { block: b.name } }, head);
      for (const op of b.ops) box.append(opButton(op, b.name));
      blocks.append(box);
    }
    map.append(el("div", { class: "stage", dataset: { stage: g.stage } }, el("h3", {}, g.stage), blocks));
  }
  markTimes();
}

function opButton(op, block) {
  const short = block !== "stem" && block !== "head" ? op.name.slice(block.length + 1) : op.name;
  const shape = op.shape.join("×");
  const meta = `RF ${op.rf} · ${si(op.macs)} MACs · `;
  const b = el("button", { class: "op", dataset: { layer: op.name }, "aria-selected": String(op.name === state.layer),
                            title: `${op.name} (${op.type}): output ${shape}, receptive field ${op.rf}px, jump ${op.jump}px, ` +
                                   `${si(op.macs)} MACs (${pct(op.macs_share)} of the model), mean ${num(op.mean)}, max ${num(op.max)}` +
                                   (op.zero_frac !== null ? `, ${pct(op.zero_frac)} zeros` : ""),
                            onclick: () => act(showLayer(op.name)) },
    el("span", { class: "op-name" }, short), el("span", { class: "op-shape" }, shape),
    el("span", { class: "op-meta" }, meta, el("span", { class: "time" }, "")), el("span", { class: "time-bar" }));
  return b;
}

async function fillTimes() {
  const m = currentModel();
  if (!state.times[m.key]) state.times[m.key] = await api(`/api/m/${m.key}/times`);
  markTimes();
}

function markTimes() {
  const t = state.times[state.model];
  if (!t) return;
  for (const b of document.querySelectorAll("#layer-map .op")) {
    const share = t[b.dataset.layer];
    if (share === undefined) continue;
    b.querySelector(".time").textContent = `${pct(share)} of time`;
    b.querySelector(".time-bar").style.width = `${Math.min(100, 400 * share)}%`;
  }
}

async function fillGradflow() {
  const m = currentModel();
  const g = await api(`/api/m/${m.key}/p/${state.photo}/gradflow`);
  for (const s of document.querySelectorAll("#layer-map .grad")) {
    const b = g.blocks[s.dataset.block];
    if (b) { s.textContent = `gradient via shortcut ${pct(b.shortcut_share, 0)}`; s.title = g.caption; }
  }
}

// --- one op: its feature maps; one channel: its map, its input square, its filter ---

async function showLayer(name) {
  state.layer = name;
  for (const b of document.querySelectorAll("#layer-map .op")) b.setAttribute("aria-selected", String(b.dataset.layer === name));
  const m = currentModel();
  const d = await api(`/api/m/${m.key}/p/${state.photo}/layer/${encodeURIComponent(name)}`);
  if (state.layer !== name) return;
  $("detail-title").textContent = `4. Feature maps of ${d.name} (${d.type})`;
  $("detail-caption").textContent = `${d.caption}. RF ${d.rf} px, jump ${d.jump} px, ${si(d.macs)} MACs.${deployedLine(name)}`;
  state.grid = d.grid || null;
  $("channel-detail").hidden = true;
  $("value-list").replaceChildren();
  $("channel-list").replaceChildren();
  if (d.grid) {
    $("channel-list").replaceChildren(...d.grid.channels.map((c) =>
      el("button", { dataset: { channel: c }, "aria-pressed": "false", onclick: () => act(showChannel(c)) }, `#${c}`)));
    await setImage($("feature-grid"), d.grid.url);
  } else {
    $("feature-grid").hidden = true;
    $("value-list").replaceChildren(...d.channels.slice(0, 20).map((c) =>
      el("li", {}, `#${c.c}${c.label ? " " + c.label : ""}: ${num(c.max, 4)}`)));
  }
}

// --- deployed models: the per-layer tables of `layers --json` ---

async function showTables() {
  const d = await api("/api/layers");
  state.tables = d.tables;
  $("deployed-panel").hidden = !d.tables.length;
  $("deployed-tables").replaceChildren(...d.tables.map(tableView));
  if (state.layer) $("detail-caption").textContent += deployedLine(state.layer);
}

function tableView(t) {
  const keys = Object.keys(t.keys);
  const first = keys.find((k) => t.keys[k] === "model") || keys[0];
  const hasErr = t.rows.some((r) => r.error);
  const head = ["layer", "MACs", ...keys.map((k) => `${k} ms`), ...(hasErr ? ["rel L2", "cosine"] : []), `${first} kernel`];
  const known = (name) => document.querySelector(`[data-layer="${CSS.escape(name)}"]`);
  const rows = t.rows.map((r) => el("tr", { dataset: { layer: r.name }, class: known(r.name) ? "link" : "",
    onclick: () => { if (known(r.name)) act(showLayer(r.name)); } },
    el("td", {}, r.name), el("td", {}, r.macs ? si(r.macs) : ""),
    ...keys.map((k) => el("td", {}, r.times_ms[k] === undefined ? "" : r.times_ms[k].toFixed(3))),
    ...(hasErr ? [el("td", {}, r.error ? num(r.error.rel_l2) : ""), el("td", {}, r.error ? num(r.error.cosine, 6) : "")] : []),
    el("td", {}, (r.kernels || {})[first] || "")));
  const e2e = keys.filter((k) => t.end_to_end_ms[k]).map((k) => `${k} ${t.end_to_end_ms[k].toFixed(2)} ms`).join("; ");
  const caption = `${t.file}: ${t.model}${t.reference ? " against " + t.reference : ""}, on ${t.cpu || "an unnamed CPU"}. End to end: ${e2e}.`;
  return el("div", { class: "deployed" }, el("h3", {}, caption),
    el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows))));
}

function deployedLine(name) {
  const parts = [];
  for (const t of state.tables || []) {
    const r = t.rows.find((x) => x.name === name);
    if (!r) continue;
    const times = Object.entries(r.times_ms).map(([k, v]) => `${k} ${v.toFixed(3)} ms`).join(", ");
    parts.push(`${t.file}: ${times}${r.error ? `; rel L2 ${num(r.error.rel_l2)} against the reference` : ""}`);
  }
  return parts.length ? ` Deployed: ${parts.join(" · ")}.` : "";
}

function gridClick(ev) {
  const g = state.grid;
  const img = ev.currentTarget;
  if (!g || !img.naturalWidth) return;
  const x = ev.offsetX * img.naturalWidth / img.clientWidth, y = ev.offsetY * img.naturalHeight / img.clientHeight;
  const step = (img.naturalWidth + 1) / g.cols;
  const k = Math.floor(y / step) * g.cols + Math.floor(x / step);
  if (k >= 0 && k < g.channels.length) act(showChannel(g.channels[k]));
}

async function showChannel(c) {
  const m = currentModel();
  const name = state.layer;
  state.channel = c;
  for (const b of document.querySelectorAll("#channel-list button")) b.setAttribute("aria-pressed", String(Number(b.dataset.channel) === c));
  const d = await api(`/api/m/${m.key}/p/${state.photo}/layer/${encodeURIComponent(name)}/channel/${c}`);
  if (state.layer !== name || state.channel !== c) return;
  $("channel-detail").hidden = false;
  $("channel-title").textContent = `${d.name}, channel ${d.channel}`;
  $("channel-caption").textContent = `${d.shape.join("×")}, own colour scale [${num(d.min)}, ${num(d.max)}]; strongest at row ${d.argmax[0]}, column ${d.argmax[1]}`;
  const [l, t, r, b] = d.rf_box;
  const s = d.crop;
  const box = $("rf-box");
  box.style.left = `${100 * l / s}%`; box.style.top = `${100 * t / s}%`;
  box.style.width = `${100 * (r - l + 1) / s}%`; box.style.height = `${100 * (b - t + 1) / s}%`;
  const peak = $("rf-peak");
  peak.style.left = `${100 * ((l + r) / 2 + 0.5) / s}%`; peak.style.top = `${100 * ((t + b) / 2 + 0.5) / s}%`;
  $("rf-caption").textContent = `The input square the strongest unit sees: its receptive field, ${d.rf} px (clipped to the ${s} px crop); the dot is its centre.`;
  const jobs = [setImage($("channel-map"), d.map_url), setImage($("rf-photo"), `/api/m/${m.key}/p/${state.photo}/input/crop.png`)];
  if (d.kernels) {
    jobs.push(setImage($("kernel-img"), d.kernels.url));
    if (d.kernels.rgb_url) jobs.push(setImage($("kernel-rgb"), d.kernels.rgb_url)); else $("kernel-rgb").hidden = true;
    $("kernel-caption").textContent = `The filter of ${d.kernels.conv} (${d.kernels.shape.join("×")}) that makes channel ${c}: ` +
      "its slices on the input channels with the largest weights, strongest first; red > 0 > blue" +
      (d.kernels.rgb_url ? ". Left: the whole filter as a colour patch (grey = 0)." : ".");
  } else {
    $("kernel-img").hidden = $("kernel-rgb").hidden = true;
    $("kernel-caption").textContent = "";
  }
  await Promise.all(jobs);
}

// --- model against model ---

async function showCompare() {
  $("compare-note").textContent = "comparing (each model runs the photo; latency is timed once per session)…";
  const d = await api(`/api/p/${state.photo}/compare`);
  $("compare-note").textContent = d.latency_note;
  const head = el("tr", {}, ...["model", "top-1", "agrees with model 0", "latency", "logits max |Δ|", "KL", "note"].map((h) => el("th", {}, h)));
  const rows = d.models.map((m) => el("tr", {},
    el("td", {}, `${m.key}: ${m.arch} · ${m.source || "unknown"}`), el("td", {}, `#${m.top1.index} ${m.top1.label} ${probText(m.top1.prob)}`),
    el("td", {}, m.key === 0 ? "–" : (m.agrees ? "yes" : "NO")), el("td", {}, m.latency_ms ? `${m.latency_ms.toFixed(1)} ms` : ""),
    el("td", {}, m.output ? num(m.output.max_abs_diff) : "–"), el("td", {}, m.output ? num(m.output.kl) : "–"), el("td", {}, m.note || "")));
  $("compare-models").replaceChildren(el("div", { class: "table-wrap" }, el("table", { id: "compare-table" }, el("thead", {}, head), el("tbody", {}, ...rows))));
  const parts = [];
  for (const m of d.models) {
    if (!m.layers) continue;
    const L = m.layers;
    parts.push(el("h3", {}, `model ${m.key} against model 0, layer by layer: ` +
      (L.first_divergence ? `first divergence at ${L.first_divergence} (max |Δ| / max |ref| > ${L.rtol})` : `no layer differs by more than ${L.rtol} (relative)`)));
    const trs = L.layers.map((x) => el("tr", { class: x.name === L.first_divergence ? "first" : (x.diverged ? "diverged" : "") },
      el("td", {}, x.name === x.candidate ? x.name : `${x.name} ↔ ${x.candidate}`), el("td", {}, x.max_abs === null ? "shape " + x.candidate_shape.join("×") : num(x.max_abs)),
      el("td", {}, x.rel === null ? "–" : num(x.rel)), el("td", {}, x.cosine === null ? "–" : Number(x.cosine).toFixed(6))));
    parts.push(el("div", { class: "table-wrap" }, el("table", { class: "layer-diff" },
      el("thead", {}, el("tr", {}, ...["layer", "max |Δ|", "relative", "cosine"].map((h) => el("th", {}, h)))), el("tbody", {}, ...trs))));
  }
  $("compare-layers").replaceChildren(...parts);
  $("compare-pruned").replaceChildren(...d.models.filter((m) => m.pruned).flatMap(prunedParts));
}

// A pruned model's channels per layer, as indices into the unpruned arch: how many it kept, and which it removed.
function prunedParts(m) {
  const P = m.pruned;
  const parts = [el("h3", {}, `model ${m.key}: channels kept by pruning, numbered as in the unpruned ${m.arch}`)];
  if (P.note) parts.push(el("p", { class: "hint" }, P.note));
  const removed = (x) => {
    if (!x.removed || !x.removed.length) return x.note || x.summary;
    const all = el("div", {}, x.removed.join(", "));
    all.style.whiteSpace = "normal";
    all.style.textAlign = "left";
    return el("details", {}, el("summary", {}, x.summary), all);
  };
  const trs = P.layers.map((x) => el("tr", { dataset: { layer: x.name } },
    el("td", {}, x.conv ? `${x.conv} → ${x.name}` : x.name), el("td", {}, `${x.kept} of ${x.width}`), el("td", { class: "removed" }, removed(x))));
  parts.push(el("div", { class: "table-wrap" }, el("table", { class: "pruned-channels" },
    el("thead", {}, el("tr", {}, ...["conv → BatchNorm", "channels kept", "removed (click for all)"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...trs))));
  return parts;
}

async function showDrift() {
  const layer = $("cam-layer").value;
  const cls = state.camClass === null ? "" : `&cls=${state.camClass}`;
  const d = await api(`/api/p/${state.photo}/drift?layer=${layer}${cls}`);
  $("drift").replaceChildren(...d.cams.map((c) => c.url
    ? el("figure", {}, el("img", { src: c.url, alt: `CAM of model ${c.model}` }), el("figcaption", {}, `model ${c.model}: ${c.caption}`))
    : el("figure", {}, el("figcaption", {}, `model ${c.model}: ${c.note}`))));
}

// --- a new photo ---

function setupUpload() {
  $("file-input").addEventListener("change", (ev) => { if (ev.target.files[0]) act(upload(ev.target.files[0])); ev.target.value = ""; });
  document.addEventListener("dragover", (ev) => { ev.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  document.addEventListener("drop", (ev) => {
    ev.preventDefault();
    document.body.classList.remove("dragging");
    if (ev.dataTransfer.files[0]) act(upload(ev.dataTransfer.files[0]));
  });
}

async function upload(file) {
  const out = $("upload-status");
  out.classList.remove("error");
  const limit = state.session.max_upload_bytes;
  if (file.size > limit) {
    out.classList.add("error");
    out.textContent = `${file.name}: ${(file.size / 1e6).toFixed(1)} MB is more than the ${limit / 1e6} MB a photo may be here`;
    return;
  }
  out.textContent = `uploading ${file.name}…`;
  try {
    const p = await api(`/api/photos?name=${encodeURIComponent(file.name)}`,
                        { method: "POST", body: file, headers: { "x-explorer": "1", "content-type": "application/octet-stream" } });
    state.session.photos = state.session.photos.filter((q) => q.key !== p.key).concat([p]);
    out.textContent = `${p.name}: ${p.size[0]}×${p.size[1]}`;
    await showPhoto(p.key);
  } catch (e) {
    out.classList.add("error");
    out.textContent = e.message;
  }
}

init().catch((e) => status(`could not start: ${e.message}`, true));
