// The live A/B view: refetches the JSON API every data-refresh seconds and redraws the summary
// table and the per-window chart in place (no page reload). Values are set as text, never as HTML.
(function () {
  "use strict";
  const root = document.getElementById("ab-live");
  if (!root) return;
  const resource = root.dataset.resource;
  const since = root.dataset.since;
  const refreshMs = Math.max(Number(root.dataset.refresh) || 5, 0.5) * 1000;
  const metricSelect = document.getElementById("ab-metric");
  const status = document.getElementById("ab-updated");
  const colors = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];
  let lastSeries = null;

  const query = () => {
    const params = new URLSearchParams({ resource });
    if (since) params.set("since", since);
    return params.toString();
  };

  async function getJSON(path) {
    const response = await fetch(path, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new Error(response.status + " " + detail);
    }
    return response.json();
  }

  const fmt = {
    pct: (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(1) + "%"),
    num: (v, d = 3) => (v === null || v === undefined ? "–" : Number.isInteger(v) ? v.toLocaleString("en") : v.toFixed(d)),
    ms: (v) => {
      if (v === null || v === undefined) return "–";
      if (v >= 60000) return (v / 60000).toFixed(1) + " min";
      if (v >= 1000) return (v / 1000).toFixed(2) + " s";
      return v.toFixed(1) + " ms";
    },
    cost: (v) => (!v ? "0" : v < 1 ? String(Number(v.toFixed(6))) : v.toFixed(2)),
  };

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function renderSummary(ab) {
    const body = document.querySelector("#ab-summary tbody");
    if (!body) return;
    const rows = ab.versions.map((v) => {
      const tr = document.createElement("tr");
      tr.dataset.version = v.version;
      const link = document.createElement("a");
      link.href = "/rollouts?" + new URLSearchParams({ resource, version: v.version });
      link.textContent = "v" + v.version;
      const first = document.createElement("td");
      first.appendChild(link);
      const labels = document.createElement("td");
      for (const label of v.labels) {
        const badge = document.createElement("span");
        badge.className = "badge label l-" + label.replace(/[^a-z0-9_-]/gi, "");
        badge.textContent = label;
        labels.append(badge, " ");
      }
      tr.append(first, labels, cell(String(v.rollouts), "r"), cell(fmt.pct(v.success_rate), "r big-num"),
        cell(v.succeeded + " / " + v.failed, "r"), cell(fmt.num(v.reward_mean), "r"), cell(fmt.pct(v.handoff_rate), "r"),
        cell(fmt.ms(v.latency_p50_ms), "r"), cell(fmt.ms(v.latency_p95_ms), "r"), cell(fmt.ms(v.latency_p99_ms), "r"),
        cell(String(v.llm_calls), "r"), cell(fmt.num(v.input_tokens) + " / " + fmt.num(v.output_tokens), "r"),
        cell(fmt.cost(v.cost), "r"));
      return tr;
    });
    if (rows.length) body.replaceChildren(...rows);
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(name, attrs, text) {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function renderChart(data) {
    lastSeries = data;
    const chart = document.getElementById("ab-chart");
    const legend = document.getElementById("ab-legend");
    if (!chart) return;
    const metric = metricSelect ? metricSelect.value : "success_rate";
    const W = 900, H = 260, left = 56, right = 16, top = 14, bottom = 30;
    const versions = Object.keys(data.series).sort((a, b) => Number(a) - Number(b) || a.localeCompare(b));
    const points = [];
    versions.forEach((version, i) => {
      for (const w of data.series[version]) {
        const value = w[metric];
        if (value !== null && value !== undefined) points.push({ version, i, t: Date.parse(w.window_start), value, w });
      }
    });
    const nodes = [];
    if (!points.length) {
      nodes.push(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "no windows yet"));
      chart.replaceChildren(...nodes);
      legend.replaceChildren();
      return;
    }
    let t0 = Math.min(...points.map((p) => p.t)), t1 = Math.max(...points.map((p) => p.t));
    if (t1 === t0) { t0 -= 60000; t1 += 60000; }
    const rate = metric === "success_rate";
    const vMax = rate ? 1 : Math.max(...points.map((p) => p.value)) * 1.1 || 1;
    const x = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - right);
    const y = (v) => top + (1 - v / vMax) * (H - top - bottom);
    for (let k = 0; k <= 4; k++) {
      const v = (vMax * k) / 4;
      nodes.push(svg("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), class: "grid" }));
      nodes.push(svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" }, rate ? Math.round(v * 100) + "%" : fmt.num(v, 1)));
    }
    [[t0, "start"], [(t0 + t1) / 2, "middle"], [t1, "end"]].forEach(([t, anchor]) => {
      nodes.push(svg("text", { x: x(t), y: H - 8, "text-anchor": anchor, class: "axis" }, new Date(t).toISOString().slice(11, 19) + "Z"));
    });
    versions.forEach((version, i) => {
      const mine = points.filter((p) => p.version === version);
      const color = colors[i % colors.length];
      if (mine.length > 1) {
        nodes.push(svg("polyline", { points: mine.map((p) => x(p.t) + "," + y(p.value)).join(" "), fill: "none", stroke: color, "stroke-width": 2 }));
      }
      for (const p of mine) {
        const dot = svg("circle", { cx: x(p.t), cy: y(p.value), r: 4.5, fill: color, class: "pt", "data-version": version });
        dot.appendChild(svg("title", {}, "v" + version + " · " + p.w.window_start + " · " + metric + " " + fmt.num(p.value) + " · " + p.w.rollouts + " rollouts"));
        nodes.push(dot);
      }
    });
    chart.replaceChildren(...nodes);
    legend.replaceChildren(...versions.map((version, i) => {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = colors[i % colors.length];
      item.append(swatch, "v" + version);
      return item;
    }));
  }

  async function refresh() {
    try {
      const q = query();
      const [ab, series] = await Promise.all([getJSON("/api/ab?" + q), getJSON("/api/ab/series?" + q)]);
      renderSummary(ab);
      renderChart(series);
      status.textContent = "live · updated " + new Date().toLocaleTimeString();
      status.classList.remove("bad");
    } catch (e) {
      status.textContent = "update failed (" + e.message + "); retrying";
      status.classList.add("bad");
    } finally {
      window.setTimeout(refresh, refreshMs);
    }
  }

  if (metricSelect) metricSelect.addEventListener("change", () => lastSeries && renderChart(lastSeries));
  refresh();
})();
