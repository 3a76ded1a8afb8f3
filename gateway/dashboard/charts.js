// The dashboard's charts: small SVG line charts drawn by this file, no library and no CDN
// (the service must work offline). Data: the "charts" part of each stats frame (one window of
// the projections' charts view, see projections/series.py). index.html calls
// aiisCharts.show(charts, resubscribe) on every frame; the 15 min / 1 h / 24 h switch asks
// for another window by re-subscribing to stats with it.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const W = 560, H = 150, L = 46, R = 8, T = 8, B = 20;  // size and margins (user units)
  const PALETTE = ["#1565c0", "#2e7d32", "#c62828", "#ef6c00", "#6a1b9a", "#00838f", "#5d4037", "#ad1457"];
  const OUTCOME_COLORS = { succeeded: "#2e7d32", failed: "#c62828", dead_lettered: "#6a1b9a", cancelled: "#6d4c41" };
  const CHARTS = [
    ["completed", "Tasks completed per second, by outcome"],
    ["depth", "Queue depth (waiting), per priority"],
    ["latency", "Latency p50 / p95 (ms), per provider"],
    ["errors", "Provider error rate (breaker ▲ opened ▼ closed)"],
    ["cost_provider", "Cost per hour (USD), by provider"],
    ["cost_tenant", "Cost per hour (USD), by tenant"],
  ];
  const state = { window: "15m", root: null, resubscribe: null };

  function el(tag, attrs, parent, ns) {
    const node = ns ? document.createElementNS(SVG, tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  function color(name, i) { return OUTCOME_COLORS[name] || PALETTE[i % PALETTE.length]; }

  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1000) return (v / 1000).toFixed(1) + "k";
    if (a >= 10) return v.toFixed(0);
    if (a >= 0.1) return v.toFixed(2);
    return v.toPrecision(2);
  }

  function clock(ms, step) {
    const d = new Date(ms);
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return step < 60000 ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }) : hm;
  }

  const STYLE = `
    .charts-head { display: flex; gap: 1rem; align-items: center; }
    .charts-head h2 { margin: 0; }
    .charts-switch button { font: inherit; font-size: .8rem; border: 1px solid #c5cbd3; background: #fff; padding: .1rem .6rem; cursor: pointer; }
    .charts-switch button.on { background: #1d232b; color: #fff; border-color: #1d232b; }
    .charts-note { font-size: .75rem; color: #6b7580; }
    .charts-grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: .6rem 1.2rem; margin-top: .5rem; }
    .chart h3 { font-size: .8rem; font-weight: 600; margin: .2rem 0; color: #4a5561; }
    .chart svg { width: 100%; height: 150px; display: block; }
    .chart .grid { stroke: #e3e6ea; stroke-width: 1; }
    .chart .tick { font-size: 9px; fill: #6b7580; }
    .chart .mark-open { stroke: #c62828; fill: #c62828; stroke-dasharray: 2 2; }
    .chart .mark-close { stroke: #2e7d32; fill: #2e7d32; stroke-dasharray: 2 2; }
    .chart .legend { list-style: none; padding: 0; margin: .2rem 0 0; display: flex; flex-wrap: wrap; gap: .2rem .9rem; font-size: .75rem; }
    .chart .swatch { display: inline-block; width: .7rem; height: .25rem; margin-right: .3rem; vertical-align: middle; }
  `;

  function mount(root) {
    state.root = root;
    if (!document.getElementById("charts-style")) el("style", { id: "charts-style" }, document.head).textContent = STYLE;
    root.replaceChildren();
    const head = el("div", { class: "charts-head" }, root);
    el("h2", {}, head).textContent = "History";
    const sw = el("div", { class: "charts-switch", role: "group" }, head);
    for (const w of ["15m", "1h", "24h"]) {
      const b = el("button", { "data-window": w, type: "button" }, sw);
      b.textContent = { "15m": "15 min", "1h": "1 h", "24h": "24 h" }[w];
      b.onclick = () => select(w);
    }
    el("div", { class: "charts-note" }, head);
    const grid = el("div", { class: "charts-grid" }, root);
    for (const [id, title] of CHARTS) {
      const box = el("div", { class: "chart", "data-chart": id }, grid);
      el("h3", {}, box).textContent = title;
      el("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" }, box, true);
      el("ul", { class: "legend" }, box);
    }
    markWindow();
  }

  function select(w) {
    state.window = w;
    markWindow();
    if (state.resubscribe) state.resubscribe(w);
  }

  function markWindow() {
    state.root.dataset.window = state.window;
    for (const b of state.root.querySelectorAll(".charts-switch button")) {
      b.classList.toggle("on", b.dataset.window === state.window);
    }
  }

  // series: [{name, values (per bucket, null = no value), total (shown in the legend), dash}]
  function draw(id, c, series, marks, ceiling) {
    const box = state.root.querySelector(`[data-chart="${id}"]`);
    const svg = box.querySelector("svg"), legend = box.querySelector("ul");
    svg.replaceChildren(); legend.replaceChildren();
    const n = c.n, span = n * c.step_ms;
    let max = 0;
    for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
    const top = ceiling || (max > 0 ? max * 1.1 : 1);
    const x = (i) => L + ((i + 0.5) / n) * (W - L - R);
    const y = (v) => T + (1 - v / top) * (H - T - B);
    for (const f of [0, 0.5, 1]) {  // grid and y labels
      el("line", { x1: L, x2: W - R, y1: y(top * f), y2: y(top * f), class: "grid" }, svg, true);
      el("text", { x: L - 4, y: y(top * f) + 3, "text-anchor": "end", class: "tick" }, svg, true).textContent = fmt(top * f);
    }
    for (const f of [0, 0.5, 1]) {  // x labels
      const t = el("text", { x: L + f * (W - L - R), y: H - 5, "text-anchor": ["start", "middle", "end"][f * 2], class: "tick" }, svg, true);
      t.textContent = clock(c.start_ms + f * span, c.step_ms);
    }
    series.forEach((s, i) => {
      const stroke = s.color || color(s.name, i);
      let points = [];
      const flush = () => {
        if (points.length === 1) el("circle", { cx: points[0][0], cy: points[0][1], r: 2, fill: stroke }, svg, true);
        else if (points.length) el("polyline", { points: points.map((p) => p.join(",")).join(" "), fill: "none", stroke, "stroke-width": 1.6, "stroke-dasharray": s.dash || "", "data-series": s.name }, svg, true);
        points = [];
      };
      s.values.forEach((v, j) => { if (v === null) flush(); else points.push([x(j).toFixed(1), y(v).toFixed(1)]); });
      flush();
      const li = el("li", { "data-series": s.name, "data-total": String(s.total) }, legend);
      el("span", { class: "swatch", style: `background:${stroke}` }, li);
      li.append(`${s.label || s.name} ${s.totalText !== undefined ? s.totalText : fmt(s.total)}`);
    });
    for (const [ts, provider, what] of marks || []) {
      const mx = L + ((ts - c.start_ms) / span) * (W - L - R);
      if (mx < L || mx > W - R) continue;
      const cls = what === "opened" ? "mark-open" : "mark-close";
      el("line", { x1: mx, x2: mx, y1: T, y2: H - B, class: cls, "data-mark": `${provider}:${what}` }, svg, true);
      const t = el("text", { x: mx + 2, y: T + 8, class: cls + " tick" }, svg, true);
      t.textContent = (what === "opened" ? "▲ " : "▼ ") + provider;
    }
    if (!series.length) el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "tick" }, svg, true).textContent = "no data in this window";
  }

  const sum = (a) => a.reduce((t, v) => t + (v || 0), 0);

  function show(c, resubscribe) {
    if (resubscribe) state.resubscribe = resubscribe;
    if (!state.root) return;
    const note = state.root.querySelector(".charts-note");
    if (!c) { note.textContent = "projections not running"; return; }
    if (c.window !== state.window) return;  // a frame of the window before the switch
    note.textContent = `${c.n} × ${c.step_ms / 1000} s buckets`;
    const perS = 1000 / c.step_ms, perH = 3600000 / c.step_ms;
    draw("completed", c, Object.entries(c.completed).filter(([, v]) => sum(v) > 0).map(([name, v]) => (
      { name, values: v.map((k) => k * perS), total: c.totals.completed[name], totalText: `${c.totals.completed[name]} done` })));
    draw("depth", c, Object.entries(c.depth).map(([name, v]) => (
      { name, values: v, total: v[v.length - 1], totalText: `now ${v[v.length - 1]}` })));
    const lat = [];
    Object.entries(c.latency).forEach(([p, q], i) => {
      const stroke = PALETTE[i % PALETTE.length];
      lat.push({ name: p + ":p50", label: p + " p50", values: q.p50, color: stroke, total: Math.max(0, ...q.p50.filter((v) => v !== null)), totalText: "" });
      lat.push({ name: p + ":p95", label: p + " p95", values: q.p95, color: stroke, dash: "4 3", total: Math.max(0, ...q.p95.filter((v) => v !== null)), totalText: "" });
    });
    draw("latency", c, lat);
    draw("errors", c, Object.entries(c.calls).map(([p, k]) => {
      const t = c.totals.calls[p];
      return { name: p, values: k.rate.map((r) => (r === null ? null : 100 * r)), total: t.fail, totalText: `${t.fail} failed / ${t.ok + t.fail} calls (%)` };
    }), c.marks, 100);
    draw("cost_provider", c, Object.entries(c.usd_provider).map(([p, v]) => (
      { name: p, values: v.map((u) => u * perH), total: c.totals.usd_nanos_provider[p], totalText: "$" + (c.totals.usd_nanos_provider[p] / 1e9).toFixed(6) })));
    draw("cost_tenant", c, Object.entries(c.usd_tenant).map(([t, v]) => (
      { name: t, values: v.map((u) => u * perH), total: c.totals.usd_nanos_tenant[t], totalText: "$" + (c.totals.usd_nanos_tenant[t] / 1e9).toFixed(6) })));
  }

  window.aiisCharts = {
    get window() { return state.window; },
    mount,
    show,
  };
})();
