// Live quality on the dashboard (docs/quality.md): each call's turn latency as the server wrote it
// into its agent.state events, the transcript's turn marks, and the fleet's tiles and chart from
// GET /v1/stats. Plain ES module, no dependencies; app.js owns the model and calls in here.

const SVG_NS = "http://www.w3.org/2000/svg";

/** What the server flags against (`--latency-warn-ms`, told by /v1/stats) and its last stats. */
export const quality = { warnMs: 1500, stats: null };

export function fmtMs(ms) {
  if (ms == null || !isFinite(ms)) return "–";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

function nearestRank(sorted, q) {
  return sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)];
}

/** Keep an agent.state's figures; the transcript item that marks them, or null. */
export function recordTurn(c, msg) {
  const d = msg.data || {};
  c.latencies ??= new Map(); // seq → latency_ms: replays and "*" deliver some events twice
  c.cuts ??= new Set();
  if (typeof d.latency_ms === "number") {
    c.latencies.set(msg.seq, d.latency_ms);
    return { kind: "turn", seq: msg.seq, ts: msg.ts, latency: d.latency_ms };
  }
  if (d.interrupted === true) {
    c.cuts.add(msg.seq);
    return { kind: "turn", seq: msg.seq, ts: msg.ts, interrupted: true };
  }
  return null;
}

/** {last, p90, n, interruptions} of the call's turns, or null before its first turn. Before the
 * events are in (a call first seen through the list), the server's own `metrics`. */
export function latencyOf(c) {
  if (c.latencies && c.latencies.size) {
    const bySeq = [...c.latencies].sort((a, b) => a[0] - b[0]);
    const sorted = bySeq.map(([, ms]) => ms).sort((a, b) => a - b);
    return { last: bySeq[bySeq.length - 1][1], p90: nearestRank(sorted, 0.9), n: sorted.length, interruptions: c.cuts.size };
  }
  const m = c.serverMetrics;
  if (m && m.latency_ms) return { last: null, p90: m.latency_ms.p90, n: m.turns, interruptions: m.interruptions };
  return null;
}

/** Over the threshold: the call's p90 (its slowest turns) is past it. */
export function isSlow(c) {
  const lat = latencyOf(c);
  return !!lat && lat.p90 > quality.warnMs;
}

const level = (ms) => (ms > quality.warnMs ? "warn" : "ok");

/** The list row's badge: the last turn and the p90, each coloured against the threshold. */
export function latencyBadge(h, c) {
  const lat = latencyOf(c);
  if (!lat) return h("span", { class: "lat none", text: "", "aria-hidden": "true" });
  return h("span", {
    class: `lat ${level(lat.p90)}`,
    title: `Turn latency: last ${fmtMs(lat.last)}, p90 ${fmtMs(lat.p90)} over ${lat.n} turns (flagged past ${fmtMs(quality.warnMs)})`,
    "aria-label": `Turn latency, last ${fmtMs(lat.last)}, p90 ${fmtMs(lat.p90)}`,
    "data-p90": lat.p90,
  },
  lat.last == null ? null : h("b", { class: `lat-last ${level(lat.last)}`, text: fmtMs(lat.last) }),
  h("span", { class: "lat-p90", text: `p90 ${fmtMs(lat.p90)}` }));
}

/** The transcript's mark of a turn: how long the caller waited, or that they cut in. */
export function turnItem(h, it) {
  if (it.interrupted) {
    return h("li", { class: "turn cut", "data-seq": it.seq, "data-kind": "turn" },
      h("span", { text: "the caller cut in" }));
  }
  return h("li", { class: `turn ${level(it.latency)}`, "data-seq": it.seq, "data-kind": "turn", "data-latency": it.latency },
    h("span", { text: `answered in ${fmtMs(it.latency)}`, title: "From the caller's last final to the agent speaking" }));
}

/** The campaign's fleet tiles: latency p90 now (15 min), interruptions per call, calls over. */
export function renderTiles($, slowLive) {
  const st = quality.stats;
  const p90 = st && st.latency_ms ? st.latency_ms.p90 : null;
  $("stat-latency").textContent = fmtMs(p90);
  $("stat-latency").parentElement.classList.toggle("warn", p90 != null && p90 > quality.warnMs);
  $("stat-interruptions").textContent = st ? st.interruptions_per_call.toFixed(2) : "–";
  $("stat-slow").textContent = String(slowLive);
  $("stat-slow-label").textContent = `calls over ${fmtMs(quality.warnMs)}`;
}

const s = (tag, attrs = {}) => {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
};

/** The fleet's latency over the last 15 minutes: p50 and p90 a minute, the threshold dashed. */
export function renderChart(el) {
  const series = quality.stats ? quality.stats.series : [];
  const w = Math.max(240, el.clientWidth || 640), hgt = 170, pad = { l: 56, r: 10, t: 10, b: 22 };
  const svg = s("svg", { viewBox: `0 0 ${w} ${hgt}`, width: w, height: hgt, class: "fleet-svg", role: "img" });
  const values = series.flatMap((p) => (p.latency_ms ? [p.latency_ms.p50, p.latency_ms.p90] : []));
  const top = Math.ceil(Math.max(quality.warnMs * 1.25, ...values, 500) / 250) * 250;
  const x = (i) => pad.l + (series.length > 1 ? (i / (series.length - 1)) * (w - pad.l - pad.r) : 0);
  const y = (v) => pad.t + (1 - v / top) * (hgt - pad.t - pad.b);
  for (const v of [0, top / 2, top]) {
    svg.append(s("line", { class: "grid", x1: pad.l, x2: w - pad.r, y1: y(v), y2: y(v) }));
    const label = s("text", { class: "axis", x: pad.l - 6, y: y(v) + 4, "text-anchor": "end" });
    label.textContent = fmtMs(v);
    svg.append(label);
  }
  svg.append(s("line", { class: "threshold", x1: pad.l, x2: w - pad.r, y1: y(quality.warnMs), y2: y(quality.warnMs) }));
  for (const [name, cls] of [["p50", "p50"], ["p90", "p90"]]) {
    const pts = series.map((p, i) => (p.latency_ms ? `${x(i).toFixed(1)},${y(p.latency_ms[name]).toFixed(1)}` : null)).filter(Boolean);
    if (pts.length) svg.append(s("polyline", { class: `series ${cls}`, points: pts.join(" ") }));
  }
  series.forEach((p, i) => { // a dot a minute (a lone minute has no line), red past the threshold
    if (!p.latency_ms) return;
    svg.append(s("circle", { class: "dot p50", cx: x(i), cy: y(p.latency_ms.p50), r: 2.5 }));
    const over = p.latency_ms.p90 > quality.warnMs;
    svg.append(s("circle", { class: `dot p90${over ? " over" : ""}`, cx: x(i), cy: y(p.latency_ms.p90), r: over ? 3.5 : 2.5 }));
  });
  for (const [i, text] of [[0, "−15 min"], [series.length - 1, "now"]]) {
    if (i < 0) continue;
    const label = s("text", { class: "axis", x: x(i), y: hgt - 6, "text-anchor": i ? "end" : "start" });
    label.textContent = text;
    svg.append(label);
  }
  const last = [...series].reverse().find((p) => p.latency_ms);
  svg.setAttribute("aria-label", last
    ? `Fleet turn latency over the last 15 minutes; latest p90 ${fmtMs(last.latency_ms.p90)}, threshold ${fmtMs(quality.warnMs)}`
    : "No turns in the last 15 minutes");
  el.replaceChildren(svg);
}
