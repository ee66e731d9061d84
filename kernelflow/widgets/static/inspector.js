// kernelflow GraphInspector front end (anywidget ES module, no dependencies, nothing fetched).
// The layout comes from Python (igraph Sugiyama); this module draws it as SVG, pans/zooms,
// and sends clicks back: {type: "click" | "summary" | "trace" | "clear" | "refresh" | "collapse_all", id}.

const SVGNS = "http://www.w3.org/2000/svg";
const OP_COLORS = {
  variable: "#f7d774", placeholder: "#a8dd8a", constant: "#d9d9d9", elementwise: "#a6cee3",
  reduce: "#b9e0a5", movement: "#d5c4e8", indexing: "#e3cff0", linalg: "#f9a8a0", nn: "#fdc98a",
  conv: "#ffab7a", state: "#ffe7a0", random: "#c7e9c0", training: "#f4b6c2", other: "#eeeeee",
  scope: "#dce6f5",
};
const DEVICE_COLORS = ["#a6cee3", "#fdbf6f", "#b2df8a", "#fb9a99", "#cab2d6", "#ffff99", "#e0e0e0"];
const MAX_EDGE_LABELS = 800;
const READABLE_SCALE = 1;       // the first view's least zoom: edge labels (10 px) stay 10 px
const MAX_FIRST_SCALE = 1.25;   // and its largest, for a small graph
const LABEL_CHAR_W = 6.2;       // a 10 px label's advance per character (generous: no overlap)
const LABEL_H = 11;
const MIN_CANVAS_H = 420, MAX_CANVAS_H = 900;
const BADGE_H = 14;             // a closed scope's fused-kernel count badge, on its top right corner

function el(tag, attrs = {}, parent = null, ns = null) {
  const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  if (parent) parent.appendChild(node);
  return node;
}
const svg = (tag, attrs, parent) => el(tag, attrs, parent, SVGNS);

function view(dv, Type) {
  if (!dv || !dv.byteLength) return new Type(0);
  return new Type(dv.buffer, dv.byteOffset, dv.byteLength / Type.BYTES_PER_ELEMENT);
}

function fmt(v) {
  if (v === null || v === undefined) return "-";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return v.toLocaleString();
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : v.toFixed(4);
}

function render({ model, el: root }) {
  root.classList.add("kf-inspector");
  const bar = el("div", { class: "kf-toolbar" }, root);
  const search = el("input", { class: "kf-search", type: "search", placeholder: "search nodes / ops" }, bar);
  const colorSel = el("select", { class: "kf-color" }, bar);
  el("option", { value: "op", text: "colour: op kind" }, colorSel);
  el("option", { value: "device", text: "colour: device" }, colorSel);
  const btnFit = el("button", { class: "kf-fit", text: "Fit" }, bar);
  const btnCollapse = el("button", { class: "kf-collapse-all", text: "Collapse all" }, bar);
  const btnRefresh = el("button", { class: "kf-refresh", text: "Refresh" }, bar);
  const info = el("span", { class: "kf-info" }, bar);
  const planLine = el("div", { class: "kf-plan" }, root);
  const status = el("div", { class: "kf-status" }, root);
  const main = el("div", { class: "kf-main" }, root);
  const canvas = el("div", { class: "kf-canvas" }, main);
  const panel = el("div", { class: "kf-details" }, main);
  const sv = svg("svg", { class: "kf-svg", width: "100%", height: "100%" }, canvas);
  const defs = svg("defs", {}, sv);
  const marker = svg("marker", { id: "kf-arrow", viewBox: "0 0 10 10", refX: "9", refY: "5",
    markerWidth: "6", markerHeight: "6", orient: "auto-start-reverse" }, defs);
  svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "kf-arrowhead" }, marker);
  const scene = svg("g", { class: "kf-scene" }, sv);

  let vw = { x: 0, y: 0, k: 1 };
  let fitted = false;
  const applyView = () => scene.setAttribute("transform", `translate(${vw.x},${vw.y}) scale(${vw.k})`);
  // The Fit button: the whole drawing, however small its text gets.
  const fit = () => {
    const meta = model.get("meta") || {};
    const w = canvas.clientWidth || 800, h = canvas.clientHeight || 560;
    const k = Math.min(1, w / Math.max(1, meta.width || 1), h / Math.max(1, meta.height || 1));
    vw = { x: Math.max(0, (w - (meta.width || 0) * k) / 2), y: 0, k };
    applyView();
  };
  // The first view (TensorBoard's): the whole drawing when it fits at a readable zoom (text at
  // least READABLE_SCALE times its size, so no label under 10 px), else its top at that zoom,
  // centred, to pan from.
  const firstView = () => {
    const meta = model.get("meta") || {};
    const mw = Math.max(1, meta.width || 1), mh = Math.max(1, meta.height || 1);
    // a taller canvas, up to MAX_CANVAS_H, rather than a smaller drawing
    main.style.height = `${Math.round(Math.min(MAX_CANVAS_H, Math.max(MIN_CANVAS_H, mh * READABLE_SCALE + 8)))}px`;
    const w = canvas.clientWidth || 800, h = canvas.clientHeight || 560;
    const k = Math.max(READABLE_SCALE, Math.min(MAX_FIRST_SCALE, w / mw, h / mh));
    vw = { x: (w - mw * k) / 2, y: Math.max(0, (h - mh * k) / 2), k };
    applyView();
  };

  // ---------------------------------------------------------------- pan / zoom
  canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const r = canvas.getBoundingClientRect();
    const mx = ev.clientX - r.left, my = ev.clientY - r.top;
    const f = Math.exp(-ev.deltaY * 0.0015);
    const k = Math.min(4, Math.max(0.02, vw.k * f));
    vw = { x: mx - (mx - vw.x) * (k / vw.k), y: my - (my - vw.y) * (k / vw.k), k };
    applyView();
  }, { passive: false });
  let drag = null;
  canvas.addEventListener("pointerdown", (ev) => {
    if (ev.target.closest && ev.target.closest(".kf-box, .kf-header")) return;
    drag = { x: ev.clientX, y: ev.clientY, vx: vw.x, vy: vw.y };
    canvas.setPointerCapture(ev.pointerId);
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    vw.x = drag.vx + ev.clientX - drag.x;
    vw.y = drag.vy + ev.clientY - drag.y;
    applyView();
  });
  canvas.addEventListener("pointerup", () => { drag = null; });

  // ---------------------------------------------------------------- drawing
  let boxEls = [];
  let edgeEls = [];
  function colorOf(meta, i, deviceIndex) {
    if (meta.kinds[i] !== "node") return OP_COLORS.scope;
    if (model.get("color_by") === "device") {
      const d = meta.devices[i];
      if (!deviceIndex.has(d)) deviceIndex.set(d, deviceIndex.size);
      return DEVICE_COLORS[deviceIndex.get(d) % DEVICE_COLORS.length];
    }
    return OP_COLORS[meta.categories[i]] || OP_COLORS.other;
  }

  function draw() {
    const meta = model.get("meta") || {};
    if (!meta.ids) return;
    const xywh = view(model.get("boxes"), Float32Array);
    const ends = view(model.get("edge_ends"), Int32Array);
    const offs = view(model.get("edge_offsets"), Int32Array);
    const pts = view(model.get("edge_points"), Float32Array);
    const flags = view(model.get("edge_flags"), Uint8Array);
    // index into meta.fused of the compiled kernel each node box belongs to (-1: none)
    const fusedOf = view(model.get("box_fused"), Int32Array);
    const fused = meta.fused || [];
    const groupOf = (i) => (i < fusedOf.length && fusedOf[i] >= 0 ? fused[fusedOf[i]] : null);
    const scopeFused = meta.scope_fused || {};  // closed scope id -> indices into fused
    const badges = [];                          // their rectangles, kept free of edge labels
    scene.textContent = "";
    const gGroups = svg("g", {}, scene), gEdges = svg("g", {}, scene), gNodes = svg("g", {}, scene);
    const deviceIndex = new Map();
    boxEls = new Array(meta.ids.length);
    for (let i = 0; i < meta.ids.length; i++) {
      const [x, y, w, h] = [xywh[4 * i], xywh[4 * i + 1], xywh[4 * i + 2], xywh[4 * i + 3]];
      const kind = meta.kinds[i];
      const id = meta.ids[i];
      if (kind === "group") {
        const g = svg("g", { class: "kf-group", "data-id": id }, gGroups);
        svg("rect", { x, y, width: w, height: h, rx: 6, class: "kf-group-rect" }, g);
        const head = svg("g", { class: "kf-header", "data-id": id }, g);
        svg("rect", { x, y, width: w, height: 22, rx: 6, class: "kf-header-rect" }, head);
        svg("text", { x: x + 8, y: y + 15, class: "kf-title", text: `\u25BE ${meta.titles[i]}  ${meta.subtitles[i]}` }, head);
        svg("title", { text: `${id} (click to collapse)` }, head);
        head.addEventListener("click", (ev) => { ev.stopPropagation(); model.send({ type: "click", id }); });
        boxEls[i] = g;
        continue;
      }
      const fg = groupOf(i);
      const g = svg("g", { class: `kf-box kf-${kind} kf-cat-${meta.categories[i]}${fg ? " kf-fused" : ""}`,
        "data-id": id }, gNodes);
      if (fg) { g.style.setProperty("--kf-fused", fg.color); g.setAttribute("data-fused", fg.name); }
      svg("rect", { x, y, width: w, height: h, rx: kind === "scope" ? 8 : 4, fill: colorOf(meta, i, deviceIndex),
        class: "kf-box-rect" }, g);
      const t1 = kind === "scope" ? `\u25B8 ${meta.titles[i]}` : meta.titles[i];
      svg("text", { x: x + w / 2, y: y + 15, class: "kf-title", "text-anchor": "middle", text: t1 }, g);
      svg("text", { x: x + w / 2, y: y + 28, class: "kf-sub", "text-anchor": "middle", text: meta.subtitles[i] }, g);
      const fusedNote = fg ? `\nfused kernel '${fg.name}': ${fg.ops} (${fg.members} nodes, one kernel)` : "";
      const inside = kind === "scope" ? (scopeFused[id] || []).map((k) => fused[k]).filter(Boolean) : [];
      let scopeNote = "";
      if (inside.length) {
        // a closed scope holding members of fused kernels: a strip of their colours along its
        // bottom and a badge with their count, so the plan shows without opening it
        g.classList.add("kf-has-fused");
        g.setAttribute("data-fused-count", String(inside.length));
        const sw = (w - 8) / inside.length;
        inside.forEach((f, k) => {
          const seg = svg("rect", { x: x + 4 + k * sw, y: y + h - 6, width: sw, height: 4, class: "kf-fused-strip" }, g);
          seg.style.setProperty("--kf-fused", f.color);
        });
        const text = String(inside.length), bw = 8 + 6.5 * text.length;
        const bx = x + w - bw - 3, by = y - BADGE_H / 2;
        const badge = svg("g", { class: "kf-fused-badge" }, g);
        badge.style.setProperty("--kf-fused", inside[0].color);
        svg("rect", { x: bx, y: by, width: bw, height: BADGE_H, rx: BADGE_H / 2, class: "kf-fused-badge-rect" }, badge);
        svg("text", { x: bx + bw / 2, y: by + 10.5, "text-anchor": "middle", class: "kf-fused-count", text }, badge);
        badges.push([bx, by, bw, BADGE_H]);
        const names = inside.slice(0, 8).map((f) => `${f.name} (${f.ops})`).join(", ");
        scopeNote = `\n${inside.length} fused kernel${inside.length > 1 ? "s" : ""} with members inside: ${names}` +
          (inside.length > 8 ? ", ..." : "");
      }
      svg("title", { text: kind === "scope" ? `${id} (click to expand)${scopeNote}` : `${id}\n${meta.subtitles[i]}${fusedNote}` }, g);
      g.addEventListener("click", (ev) => { ev.stopPropagation(); model.send({ type: "click", id }); });
      boxEls[i] = g;
    }
    const nEdges = offs.length ? offs.length - 1 : 0;
    edgeEls = new Array(nEdges);
    const labels = nEdges <= MAX_EDGE_LABELS;
    // Labels go where they collide with no box and no other label; the rest show while the
    // pointer is on their edge.
    const taken = [];
    for (let i = 0; i < meta.ids.length; i++) {
      if (meta.kinds[i] !== "group") taken.push([xywh[4 * i], xywh[4 * i + 1], xywh[4 * i + 2], xywh[4 * i + 3]]);
      else taken.push([xywh[4 * i], xywh[4 * i + 1], xywh[4 * i + 2], 22]);  // a group's header
    }
    taken.push(...badges);
    const free = (r) => r[0] >= 0 && r[0] + r[2] <= meta.width && !taken.some((t) => r[0] < t[0] + t[2] && t[0] < r[0] + r[2] && r[1] < t[1] + t[3] && t[1] < r[1] + r[3]);
    for (let e = 0; e < nEdges; e++) {
      // A back edge (it closes a cycle of boxes) is two downward stubs, points 0-1 out of its
      // source and 2-3 into its target, each labelled with the box at its other end.
      const back = (flags[e] & 1) !== 0;
      let d = "";
      for (let p = offs[e]; p < offs[e + 1]; p++) {
        const move = p === offs[e] || (back && p === offs[e] + 2);
        d += (move ? "M" : "L") + pts[2 * p] + " " + pts[2 * p + 1];
      }
      const fs = groupOf(ends[2 * e]), inside = fs !== null && fs === groupOf(ends[2 * e + 1]);
      const cls = "kf-edge" + (back ? " kf-back" : "") + (flags[e] & 2 ? " kf-control" : "") +
        (inside ? " kf-fused-edge" : "");
      const path = svg("path", { d, class: cls, "marker-end": "url(#kf-arrow)" }, gEdges);
      if (inside) path.style.setProperty("--kf-fused", fs.color);
      const hit = svg("path", { d, class: "kf-edge-hit" }, gEdges);
      const src = meta.ids[ends[2 * e]], dst = meta.ids[ends[2 * e + 1]];
      svg("title", { text: back ? `${src} \u2192 ${dst} (closes a cycle between boxes: drawn as two stubs)`
        : `${src} \u2192 ${dst}${meta.edge_labels[e] ? ": " + meta.edge_labels[e] : ""}` }, hit);
      edgeEls[e] = path;
      const label = meta.edge_labels[e];
      if (back) {
        const p = offs[e];
        const a = `\u2192 ${dst}`, b = `${src} \u2192`;
        svg("text", { x: pts[2 * p + 2] + 3, y: pts[2 * p + 3] + 9, class: "kf-edge-label kf-back-label", text: a }, gEdges);
        svg("text", { x: pts[2 * p + 4] + 3, y: pts[2 * p + 5] - 1, class: "kf-edge-label kf-back-label", text: b }, gEdges);
        taken.push([pts[2 * p + 2] + 3, pts[2 * p + 3], a.length * LABEL_CHAR_W, LABEL_H]);
        taken.push([pts[2 * p + 4] + 3, pts[2 * p + 5] - 10, b.length * LABEL_CHAR_W, LABEL_H]);
      } else if (labels && label) {
        const w = label.length * LABEL_CHAR_W;
        const first = offs[e], last = offs[e + 1] - 1, mid = (first + last) >> 1;
        // candidates (text baseline at x, y): above the arrow's tip, below the source, beside the middle
        const spots = [[pts[2 * last] + 4, pts[2 * last + 1] - 6], [pts[2 * first] + 4, pts[2 * first + 1] + 12],
          [pts[2 * mid] + 4, pts[2 * mid + 1] + 4], [pts[2 * last] - 4 - w, pts[2 * last + 1] - 6]];
        let spot = spots.find(([x, y]) => free([x, y - LABEL_H + 2, w, LABEL_H]));
        const hidden = spot === undefined;
        if (hidden) spot = spots[0];
        else taken.push([spot[0], spot[1] - LABEL_H + 2, w, LABEL_H]);
        const t = svg("text", { x: spot[0], y: spot[1], class: "kf-edge-label" + (hidden ? " kf-label-hidden" : ""),
          text: label }, gEdges);
        if (hidden) {
          hit.addEventListener("pointerenter", () => t.classList.add("kf-label-hover"));
          hit.addEventListener("pointerleave", () => t.classList.remove("kf-label-hover"));
        }
      }
    }
    info.textContent = `${model.get("graph_name")}: ${meta.nodes} nodes, ${meta.scopes} scopes, ` +
      `${meta.ids.length} boxes drawn` + (fused.length ? `, ${fused.length} fused kernels outlined` : "");
    planLine.textContent = model.get("plan_source") || "";
    if (!fitted) { firstView(); fitted = true; }
    decorate();
  }

  function decorate() {
    const meta = model.get("meta") || {};
    if (!meta.ids) return;
    const hl = new Set(model.get("highlight") || []);
    const sel = model.get("selected");
    const ends = view(model.get("edge_ends"), Int32Array);
    for (let i = 0; i < boxEls.length; i++) {
      if (!boxEls[i]) continue;
      boxEls[i].classList.toggle("kf-hl", hl.has(meta.ids[i]));
      boxEls[i].classList.toggle("kf-sel", meta.ids[i] === sel);
    }
    for (let e = 0; e < edgeEls.length; e++) {
      edgeEls[e].classList.toggle("kf-hl", hl.size > 0 && hl.has(meta.ids[ends[2 * e]]) && hl.has(meta.ids[ends[2 * e + 1]]));
    }
  }

  // ---------------------------------------------------------------- details panel
  function row(table, k, v) {
    const tr = el("tr", {}, table);
    el("th", { text: k }, tr);
    const td = el("td", {}, tr);
    if (v instanceof Node) td.appendChild(v); else td.textContent = v;
    return tr;
  }
  function link(name) {
    const a = el("a", { href: "#", class: "kf-link", text: name });
    a.addEventListener("click", (ev) => { ev.preventDefault(); model.send({ type: "click", id: name }); });
    return a;
  }
  function histogram(parent, hist) {
    const counts = hist.counts || [];
    if (!counts.length) return;
    const W = 220, H = 60, max = Math.max(1, ...counts);
    const s = svg("svg", { width: W, height: H + 14, class: "kf-hist" }, parent);
    const bw = W / counts.length;
    counts.forEach((c, i) => svg("rect", { x: i * bw + 0.5, y: H - (H * c) / max, width: Math.max(1, bw - 1),
      height: (H * c) / max, class: "kf-hist-bar" }, s));
    const e = hist.edges || [];
    if (e.length) {
      svg("text", { x: 0, y: H + 12, class: "kf-sub", text: fmt(e[0]) }, s);
      svg("text", { x: W, y: H + 12, class: "kf-sub", "text-anchor": "end", text: fmt(e[e.length - 1]) }, s);
    }
  }
  function fusedRow(t, f, label) {
    const s = el("span", { class: "kf-fused-tag", text: `${f.ops.join(" ")} ` });
    s.style.setProperty("--kf-fused", f.color);
    s.appendChild(link(f.name));
    return row(t, label, s);
  }
  function drawDetails() {
    const d = model.get("details") || {};
    panel.textContent = "";
    panel.classList.toggle("kf-empty", !d.id);
    if (!d.id) { el("div", { class: "kf-hint", text: "Click a node for details, a scope to open or close it." }, panel); return; }
    el("div", { class: "kf-details-title", text: d.name }, panel);
    const t = el("table", { class: "kf-table" }, panel);
    if (d.kind === "scope") {
      row(t, "scope", `${d.members} nodes (${d.expanded ? "open" : "closed"})`);
      row(t, "ops", Object.entries(d.ops || {}).slice(0, 12).map(([k, v]) => `${k}\u00D7${v}`).join(", "));
      if (d.params) row(t, "parameters", fmt(d.params));
      for (const f of (d.fused || []).slice(0, 12)) fusedRow(t, f, "fused kernel");
      for (const v of (d.variables || []).slice(0, 20)) row(t, "", link(v.name)).lastChild.append(` ${v.dtype}${v.shape}`);
      return;
    }
    row(t, "op", d.op + (d.doc ? ` \u2014 ${d.doc}` : ""));
    row(t, "output", `${d.dtype}${d.shape}`);
    row(t, "device", d.device);
    if (d.source) row(t, "source", d.source);
    if (d.fused) {
      fusedRow(t, d.fused, "fused into");
      row(t, "", el("span", { class: "kf-sub", text: `with ${d.fused.members.filter((m) => m !== d.name).join(", ")}` }));
    }
    for (const [k, v] of Object.entries(d.attrs || {})) row(t, `attr ${k}`, v);
    (d.inputs || []).forEach((i, n) => row(t, n ? "" : "inputs", link(i.name)).lastChild.append(` ${i.dtype}${i.shape}`));
    if ((d.control_inputs || []).length) row(t, "after", d.control_inputs.join(", "));
    const outs = d.outputs || [];
    outs.slice(0, 12).forEach((o, n) => row(t, n ? "" : "consumers", link(o.name)).lastChild.append(` (${o.op})`));
    if (outs.length > 12) row(t, "", `... ${outs.length - 12} more`);
    const actions = el("div", { class: "kf-actions" }, panel);
    const tr = el("button", { class: "kf-trace", text: "Trace inputs" }, actions);
    tr.addEventListener("click", () => model.send({ type: "trace", id: d.id }));
    const cl = el("button", { class: "kf-clear", text: "Clear highlight" }, actions);
    cl.addEventListener("click", () => model.send({ type: "clear" }));
    const val = el("div", { class: "kf-value" }, panel);
    el("div", { class: "kf-section", text: "value" }, val);
    if (d.summary) {
      const s = d.summary;
      const vt = el("table", { class: "kf-table kf-summary" }, val);
      row(vt, "shape", `${s.dtype} [${s.shape.map((x) => (x === null ? "?" : x)).join(", ")}], ${fmt(s.size)} values`);
      row(vt, "min / max", `${fmt(s.min)} / ${fmt(s.max)}`);
      row(vt, "mean / std", `${fmt(s.mean)} / ${fmt(s.std)}`);
      row(vt, "NaN / Inf", `${s.nan} / ${s.inf}`);
      histogram(val, s.hist || {});
    } else if (d.summary_error) {
      el("div", { class: "kf-error", text: d.summary_error }, val);
    } else if ((d.needs_feeds || []).length) {
      el("div", { class: "kf-hint", text: `needs feeds for: ${d.needs_feeds.join(", ")} (use g.run with feed=...)` }, val);
    } else if ((d.side_effects || []).length) {
      el("div", { class: "kf-hint", text: `computing it would run state-changing ops: ${d.side_effects.slice(0, 5).join(", ")}` }, val);
    } else if (d.can_run) {
      const b = el("button", { class: "kf-summary-btn", text: "Compute summary on the runtime" }, val);
      b.addEventListener("click", () => model.send({ type: "summary" }));
    } else {
      el("div", { class: "kf-hint", text: "no value" }, val);
    }
  }

  // ---------------------------------------------------------------- wiring
  let pending = 0;
  const redraw = () => {
    if (pending) return;
    pending = requestAnimationFrame(() => { pending = 0; draw(); });
  };
  const geometry = ["meta", "boxes", "edge_ends", "edge_offsets", "edge_points", "edge_flags", "box_fused", "color_by"];
  for (const name of geometry) model.on(`change:${name}`, redraw);
  model.on("change:highlight", decorate);
  model.on("change:selected", decorate);
  model.on("change:details", drawDetails);
  model.on("change:status", () => { status.textContent = model.get("status"); });
  model.on("change:plan_source", () => { planLine.textContent = model.get("plan_source") || ""; });
  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { model.set("query", search.value); model.save_changes(); }, 200);
  });
  colorSel.addEventListener("change", () => { model.set("color_by", colorSel.value); model.save_changes(); });
  btnFit.addEventListener("click", () => fit());
  btnCollapse.addEventListener("click", () => model.send({ type: "collapse_all" }));
  btnRefresh.addEventListener("click", () => model.send({ type: "refresh" }));
  search.value = model.get("query") || "";
  colorSel.value = model.get("color_by") || "op";
  status.textContent = model.get("status") || "";
  draw();
  drawDetails();
  return () => { clearTimeout(timer); if (pending) cancelAnimationFrame(pending); };
}

export default { render };
