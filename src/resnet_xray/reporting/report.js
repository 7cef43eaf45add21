/* The layer navigator: a filterable list of every traced operation; clicking one shows its details. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("xray-data").textContent);
  var list = document.getElementById("layer-list");
  var detail = document.getElementById("layer-detail");
  var filter = document.getElementById("layer-filter");
  var buttons = {};
  if (!list || !detail || !data.layers) { window.__xray.ready = true; return; }  // --sections left the navigator out

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
    });
  }
  function num(v, digits) {
    if (v === null || v === undefined) return "n/a";
    if (v !== 0 && (Math.abs(v) >= 1e5 || Math.abs(v) < 1e-3)) return v.toExponential(digits - 1);
    return Number(v.toPrecision(digits)).toString();
  }
  function shape(s) { return s && s.length ? s.join("×") : "–"; }
  function pair(p) { return p ? (p[0] === p[1] ? String(p[0]) : p.join("×")) : "–"; }
  function kv(label, value) { return "<div><b>" + esc(label) + "</b>" + esc(value) + "</div>"; }

  function show(name) {
    var layer = null;
    for (var i = 0; i < data.layers.length; i++) if (data.layers[i].name === name) layer = data.layers[i];
    if (!layer) return;
    var st = layer.stats || {};
    var h = "<h3>" + esc(layer.name) + "</h3>";
    h += '<p class="lead">' + esc(layer.type) + " in " + esc(data.stageLabels[layer.stage] || layer.stage) +
         (layer.shortcut ? " (projection shortcut)" : "") + "</p>";
    h += '<div class="kv">' +
      kv("output (C×H×W)", shape(layer.output_shape)) +
      kv("kernel", layer.kernel ? layer.kernel.join("×") : "–") +
      kv("stride / padding", pair(layer.stride) + " / " + pair(layer.padding)) +
      kv("channels in → out", (layer.in_channels || "–") + " → " + (layer.out_channels || "–")) +
      kv("parameters", layer.params.toLocaleString("en")) +
      kv("macs / element ops", layer.macs.toLocaleString("en")) +
      kv("receptive field", layer.receptive_field + " px (jump " + layer.jump + ")") +
      kv("mean ± std", num(st.mean, 3) + " ± " + num(st.std, 3)) +
      kv("min / max", num(st.min, 3) + " / " + num(st.max, 3)) +
      kv("zeros", st.zero_frac === undefined || st.zero_frac === null ? "n/a" : (100 * st.zero_frac).toFixed(1) + "%") +
      kv("L2 norm", num(st.l2, 4)) +
      "</div>";
    var pics = "";
    if (data.grids[name]) {
      var g = layer.grid;
      pics += '<figure><img class="grid-img" id="detail-grid" src="' + data.grids[name] + '" alt="feature maps of ' + esc(name) + '">' +
        '<figcaption>' + esc(g.caption) + '</figcaption><div class="scale">' + esc(num(g.vmin, 3)) +
        '<span class="ramp"></span>' + esc(num(g.vmax, 3)) + "</div></figure>";
    } else if (layer.grid_note) {
      pics += "<p>" + esc(layer.grid_note) + ".</p>";
    } else {
      pics += "<p>No feature grid: this output has no spatial maps (" + esc(shape(layer.output_shape)) + ").</p>";
    }
    if (data.kernels[name]) {
      pics += '<figure><img class="kernel-img" src="' + data.kernels[name] + '" alt="kernels of ' + esc(name) + '">' +
        "<figcaption>" + esc(layer.kernel_picture) + "</figcaption></figure>";
    }
    detail.innerHTML = h + '<div class="detail-pics">' + pics + "</div>";
    if (buttons[window.__xray.selected]) buttons[window.__xray.selected].setAttribute("aria-selected", "false");
    if (buttons[name]) buttons[name].setAttribute("aria-selected", "true");
    window.__xray.selected = name;
  }

  var stage = null;
  data.layers.forEach(function (layer) {
    if (layer.stage !== stage) {
      stage = layer.stage;
      var head = document.createElement("li");
      head.className = "stage";
      head.dataset.stage = stage;
      head.textContent = data.stageLabels[stage] || stage;
      list.appendChild(head);
    }
    var li = document.createElement("li");
    var b = document.createElement("button");
    b.type = "button";
    b.setAttribute("role", "option");
    b.setAttribute("aria-selected", "false");
    b.dataset.layer = layer.name;
    b.innerHTML = esc(layer.name) + '<span class="t">' + esc(layer.type) + "</span>";
    b.addEventListener("click", function () { show(layer.name); });
    li.appendChild(b);
    list.appendChild(li);
    buttons[layer.name] = b;
  });

  filter.addEventListener("input", function () {
    var q = filter.value.trim().toLowerCase();
    Array.prototype.forEach.call(list.children, function (li) {
      if (li.classList.contains("stage")) return;
      var n = li.firstChild.dataset.layer + " " + li.firstChild.textContent;
      li.style.display = !q || n.toLowerCase().indexOf(q) >= 0 ? "" : "none";
    });
  });

  Array.prototype.forEach.call(document.querySelectorAll("a.goto"), function (a) {
    a.addEventListener("click", function () { show(a.dataset.layer); });
  });

  if (data.layers.length) show(data.layers[0].name);
  window.__xray.show = show;
  window.__xray.ready = true;
})();
