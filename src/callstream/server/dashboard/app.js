// callstream dashboard: live calls, listen-in, campaign sentiment and turn latency (quality.js).
// Plain ES module on top of callstream.js; no build step, no dependencies. The list and the
// campaign grid are windowed (virtual.js): thousands of live calls cost the rows in view. Their
// order and filters are triage.js.
//
// Auth: the page is opened as /?login=<one-time code>. The code is exchanged
// for a short-lived JWT (POST /v1/login), removed from the URL, kept in
// sessionStorage (this tab only) and refreshed before expiry
// (POST /v1/login/refresh). The page never sees an API key.

import { CallStream, States } from "./callstream.js";
import { latencyBadge, latencyOf, quality, recordTurn, renderChart, renderTiles, turnItem } from "./quality.js";
import { renderControls, requestText, resultText, setupControls, tokenScopes } from "./supervise.js";
import { SORTS, attentionCount, derive, matches, ordered } from "./triage.js";
import { Windowed } from "./virtual.js";
import { setupSearch } from "./search.js";
import { setupListen } from "./listen.js";

const SESSION_KEY = "callstream.session";
// The campaign subscription ("*") carries what the list and the sparklines
// need; partials and function calls come with the per-call listen-in subscription.
// call.started carries a call's metadata (docs/protocol.md, Call metadata); a server that does not know the
// type refuses the subscription, and the page subscribes again without it.
const WILDCARD_TYPES = ["call.started", "transcript.final", "agent.state", "call.ended"];
let wildcardTypes = WILDCARD_TYPES;
const TREND_POINTS = 24;
const MAX_ENDED_SHOWN = 50;
const MAX_ENDED_KEPT = 300; // ended calls kept in memory (the open one is always kept)
const ROW_H = 84; // px per list row: .call-list li's height plus its gap (style.css)
const CARD_H = 178; // px per grid row: .grid li's height plus the gap
const CARD_MIN_W = 250; // px: the narrowest a card gets before the grid drops a column
const GRID_GAP = 12;
const ORDER_EVERY_MS = 1000; // rows reorder at most this often as figures change
const NEW_CALL_ORDER_MS = 250; // and this often when calls come or go
const SUMMARY_EVERY_MS = 500; // counts, tiles and the page title
const LIST_PAGE = 500; // calls per GET /v1/calls page when the page loads
const BASE_TITLE = document.title;
const STATS_EVERY_MS = 10_000; // the campaign view's fleet tiles and chart (GET /v1/stats)

const $ = (id) => document.getElementById(id);
const h = (tag, attrs = {}, ...children) => {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c != null) el.append(c);
  return el;
};
const SVG_NS = "http://www.w3.org/2000/svg";
const s = (tag, attrs = {}) => {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
};

// ---- session ---------------------------------------------------------------

class SessionExpired extends Error {
  constructor(message = "session ended") {
    super(message);
    this.expired = true;
    this.status = 401;
  }
}

const session = {
  token: null,
  expiresAt: 0,
  load() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
      if (saved && saved.token) Object.assign(this, saved);
    } catch { /* corrupt storage: start over */ }
    return !!this.token;
  },
  save(token, expiresAt) {
    this.token = token;
    this.expiresAt = expiresAt;
    sessionStorage.setItem(SESSION_KEY, JSON.stringify({ token, expiresAt }));
  },
  clear() {
    this.token = null;
    sessionStorage.removeItem(SESSION_KEY);
  },
};

async function exchangeLoginCode(code) {
  const r = await fetch("/v1/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ code }),
  });
  if (!r.ok) throw Object.assign(new Error(`login failed (${r.status})`), { status: r.status });
  const body = await r.json();
  session.save(body.token, body.expires_at);
}

let refreshing = null;
/** Exchange the current JWT for a fresh one; one request at a time. */
function refreshToken() {
  refreshing ??= (async () => {
    try {
      const r = await fetch("/v1/login/refresh", {
        method: "POST",
        headers: { Authorization: `Bearer ${session.token}` },
      });
      if (r.status === 401 || r.status === 403) throw new SessionExpired();
      if (!r.ok) throw Object.assign(new Error(`refresh failed (${r.status})`), { status: r.status });
      const body = await r.json();
      session.save(body.token, body.expires_at);
      return body.token;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** GET an API path with the JWT in the Authorization header; one refresh-and-retry on 401. */
async function apiFetch(path, headers = {}) {
  for (let attempt = 0; ; attempt += 1) {
    const r = await fetch(path, { headers: { ...headers, Authorization: `Bearer ${session.token}` } });
    if (r.status === 401 && attempt === 0) {
      try {
        await refreshToken();
      } catch (err) {
        if (err.expired) sessionExpired();
        throw err;
      }
      continue;
    }
    return r;
  }
}

/** The session's JWT, refreshed first with `fresh` (the recording player's worker got a 401). */
async function currentToken(fresh) {
  if (!fresh) return session.token;
  try {
    return await refreshToken();
  } catch (err) {
    if (err.expired) sessionExpired();
    throw err;
  }
}

/** GET a JSON API path with the JWT. */
async function api(path) {
  const r = await apiFetch(path);
  if (!r.ok) throw Object.assign(new Error(`${path}: ${r.status}`), { status: r.status });
  return r.json();
}

// ---- model -----------------------------------------------------------------

/** @type {Map<string, any>} */
const calls = new Map();
const ui = {
  selected: null, view: "calls", showEnded: true, connState: "connecting",
  listFocus: null, gridFocus: null, // the call the keyboard is on, in each view
  sort: "attention",
  filter: { status: "all", sentiment: "", slow: false, campaign: "", text: "" },
};
let stream = null;

function getCall(id) {
  let c = calls.get(id);
  if (!c) {
    c = {
      id, status: "live", startedAt: null, endedAt: null, durationMs: null, endStatus: null,
      reason: null, agentState: null, agentSeq: 0, items: [], bySeq: new Map(),
      partials: new Map(), finalUtterances: new Set(), lastFinalSeqBySpeaker: {},
      tools: new Map(), pendingResults: new Map(), controls: new Map(), earlyOutcomes: new Map(),
      lastText: "", serverSentiment: null, meta: {},
      metaRequested: false, firstSeen: Date.now(),
    };
    derive(c, null, null, false);
    calls.set(id, c);
    reorder = true;
  }
  return c;
}

const campaigns = new Set(); // metadata.campaign values seen: the campaign filter's choices

/** Merge a call's metadata (an event's data.metadata, or GET /v1/calls): scalars only. */
function mergeMeta(c, m) {
  if (!m || typeof m !== "object" || Array.isArray(m)) return;
  const next = { ...c.meta };
  for (const [k, v] of Object.entries(m)) {
    if (v === null || ["string", "number", "boolean"].includes(typeof v)) next[k] = v;
  }
  c.meta = next;
  if (next.campaign != null && next.campaign !== "") campaigns.add(String(next.campaign));
}

/** Keep at most MAX_ENDED_KEPT ended calls in memory: the oldest go (never the open one). */
function pruneEnded() {
  const ended = [];
  for (const c of calls.values()) if (c.status === "ended" && c.id !== ui.selected) ended.push(c);
  if (ended.length <= MAX_ENDED_KEPT) return;
  ended.sort((a, b) => (a.endedAt || 0) - (b.endedAt || 0));
  for (const c of ended.slice(0, ended.length - MAX_ENDED_KEPT)) {
    calls.delete(c.id);
    stream.forget(c.id);
  }
  reorder = true;
}

function applyMeta(c, m) {
  if (!m) return;
  c.startedAt = m.started_at ?? c.startedAt;
  if (m.status === "ended") {
    c.status = "ended";
    c.endedAt = m.ended_at ?? c.endedAt;
    c.durationMs = m.duration_ms ?? c.durationMs;
    c.endStatus = m.end_status ?? c.endStatus;
  }
  if (m.sentiment && typeof m.sentiment.score === "number") c.serverSentiment = m.sentiment;
  if (m.metrics) c.serverMetrics = m.metrics;
  mergeMeta(c, m.metadata);
}

async function fetchMeta(c) {
  if (c.metaRequested) return;
  c.metaRequested = true;
  try {
    applyMeta(c, await api(`/v1/calls/${encodeURIComponent(c.id)}`));
    touch(c.id);
  } catch { /* the events carry what matters; meta is a nicety */ }
}

function insertItem(c, item) {
  if (c.bySeq.has(item.seq)) return;
  c.bySeq.set(item.seq, item);
  let i = c.items.length;
  while (i > 0 && c.items[i - 1].seq > item.seq) i -= 1; // events may arrive out of order across subscriptions
  c.items.splice(i, 0, item);
}

function partialKey(d) {
  return d.utterance_id != null ? `u:${d.utterance_id}` : `s:${d.speaker}`;
}

function onEvent(msg) {
  const c = getCall(msg.call_id);
  const d = msg.data || {};
  if (c.startedAt == null) c.startedAt = msg.seq === 1 ? msg.ts : null;
  if (d.metadata) mergeMeta(c, d.metadata);
  if (!c.metaRequested && msg.seq > 1) {
    // First seen mid-call through "*" (it started before the page's list was read): the next
    // read of the live calls brings its start, sentiment and metadata, for all such calls at once.
    c.metaRequested = true;
    relistSoon();
  }
  switch (msg.type) {
    case "transcript.partial": {
      if (d.utterance_id != null && c.finalUtterances.has(d.utterance_id)) break;
      if (d.utterance_id == null && msg.seq < (c.lastFinalSeqBySpeaker[d.speaker] || 0)) break;
      const key = partialKey(d);
      const prev = c.partials.get(key);
      if (c.status !== "ended" && (!prev || prev.seq < msg.seq)) {
        c.partials.set(key, { key, seq: msg.seq, speaker: d.speaker, text: d.text });
      }
      break;
    }
    case "transcript.final": {
      if (d.utterance_id != null) c.finalUtterances.add(d.utterance_id);
      c.lastFinalSeqBySpeaker[d.speaker] = Math.max(c.lastFinalSeqBySpeaker[d.speaker] || 0, msg.seq);
      const key = partialKey(d);
      const p = c.partials.get(key);
      if (p && (d.utterance_id != null || p.seq < msg.seq)) c.partials.delete(key);
      insertItem(c, { kind: "line", seq: msg.seq, ts: msg.ts, speaker: d.speaker, text: d.text, sentiment: d.sentiment || null, interrupted: d.interrupted === true, fresh: true });
      if (msg.seq >= (c.lastTextSeq || 0)) {
        c.lastText = d.text;
        c.lastTextSeq = msg.seq;
      }
      break;
    }
    case "agent.state": {
      const mark = recordTurn(c, msg); // the server's latency_ms / interrupted
      if (mark) insertItem(c, mark);
      if (msg.seq > c.agentSeq && c.status !== "ended") {
        c.agentState = d.state;
        c.agentSeq = msg.seq;
      }
      break;
    }
    case "function.call": {
      const item = { kind: "tool", seq: msg.seq, ts: msg.ts, name: d.name, args: d.args, toolCallId: d.tool_call_id ?? null, result: undefined, hasResult: false };
      const early = item.toolCallId != null ? c.pendingResults.get(item.toolCallId) : null;
      if (early) {
        item.result = early.result;
        item.hasResult = true;
        c.pendingResults.delete(item.toolCallId);
      }
      if (item.toolCallId != null) c.tools.set(item.toolCallId, item);
      insertItem(c, item);
      break;
    }
    case "function.result": {
      let item = d.tool_call_id != null ? c.tools.get(d.tool_call_id) : null;
      if (!item && d.tool_call_id == null) {
        item = [...c.items].reverse().find((it) => it.kind === "tool" && !it.hasResult && it.name === d.name && it.seq < msg.seq);
      }
      if (item) {
        item.result = d.result;
        item.hasResult = true;
        item.changed = true;
      } else if (d.tool_call_id != null) {
        c.pendingResults.set(d.tool_call_id, { result: d.result, seq: msg.seq });
      }
      break;
    }
    case "control.requested": {
      const item = { kind: "control", seq: msg.seq, ts: msg.ts, requestId: d.request_id, action: d.action, args: d.args || {}, by: d.by || {}, result: null };
      item.result = c.earlyOutcomes.get(d.request_id) || null;
      c.earlyOutcomes.delete(d.request_id);
      c.controls.set(d.request_id, item);
      insertItem(c, item);
      break;
    }
    case "control.result": {
      const outcome = { ok: d.ok === true, error: d.error ?? null };
      const item = c.controls.get(d.request_id);
      if (item) {
        item.result = outcome;
        item.changed = true;
      } else {
        c.earlyOutcomes.set(d.request_id, outcome); // the request is on a page not read yet
      }
      break;
    }
    case "call.ended":
      if (c.status !== "ended") reorder = true;
      c.status = "ended";
      c.endStatus = d.status;
      c.durationMs = d.duration_ms ?? c.durationMs;
      c.endedAt = msg.ts;
      c.reason = d.reason ?? null;
      c.agentState = null;
      c.partials.clear();
      insertItem(c, { kind: "end", seq: msg.seq, ts: msg.ts, status: d.status, durationMs: d.duration_ms, reason: d.reason });
      break;
    default:
      break;
  }
  touch(c.id);
}

function sentimentOf(c) {
  const scores = [];
  for (const it of c.items) if (it.kind === "line" && it.sentiment && typeof it.sentiment.score === "number") scores.push(it.sentiment.score);
  if (!scores.length) {
    const ss = c.serverSentiment;
    return ss ? { score: ss.score, label: ss.label, trend: ss.trend || [], n: (ss.trend || []).length } : null;
  }
  const mean = scores.reduce((a, b) => a + b, 0) / scores.length;
  const label = mean >= 0.05 ? "positive" : mean <= -0.05 ? "negative" : "neutral";
  return { score: Math.round(mean * 1000) / 1000, label, trend: scores.slice(-TREND_POINTS), n: scores.length };
}

// ---- formatting ------------------------------------------------------------

function fmtDuration(ms) {
  if (ms == null || !isFinite(ms) || ms < 0) return "–:––";
  const t = Math.floor(ms / 1000);
  const hh = Math.floor(t / 3600), mm = Math.floor((t % 3600) / 60), ss = t % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return hh ? `${hh}:${pad(mm)}:${pad(ss)}` : `${mm}:${pad(ss)}`;
}
function durationOf(c) {
  if (c.status === "ended") return c.durationMs ?? (c.endedAt && c.startedAt ? c.endedAt - c.startedAt : null);
  return c.startedAt ? Date.now() - c.startedAt : null;
}
const fmtScore = (x) => (x > 0 ? "+" : x < 0 ? "−" : "±") + Math.abs(x).toFixed(2);
const fmtTime = (ts) => (ts ? new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }) : "");
const human = (s) => String(s || "").replace(/_/g, " ");
const BAD_END = new Set(["failed", "no_answer", "busy", "canceled"]);
function statusClass(c) {
  if (c.status !== "ended") return "live";
  return BAD_END.has(c.endStatus) ? "ended failed" : "ended";
}
function statusText(c) {
  return c.status === "ended" ? human(c.endStatus || "ended") : "live";
}
function compactJson(v) {
  if (v === undefined) return "";
  let text;
  try {
    text = typeof v === "string" ? v : JSON.stringify(v);
  } catch {
    text = String(v);
  }
  return text.length > 280 ? `${text.slice(0, 277)}…` : text;
}

// ---- little components -----------------------------------------------------

function agentEl(el, state) {
  el.dataset.state = state || "";
  el.replaceChildren();
  if (!state) return el;
  el.append(h("span", { class: "bars", "aria-hidden": "true" }, h("i"), h("i"), h("i")), h("span", { text: human(state) }));
  el.setAttribute("aria-label", `Agent ${state}`);
  return el;
}

function chip(sent, { compact = false } = {}) {
  if (!sent) return h("span", { class: "chip", text: compact ? "–" : "no speech yet", title: "No speech yet" });
  return h("span", {
    class: `chip ${sent.label}`,
    text: compact ? fmtScore(sent.score) : `${sent.label} ${fmtScore(sent.score)}`,
    title: `Call sentiment: ${sent.label} (${fmtScore(sent.score)}, mean of ${sent.n} utterances)`,
    "aria-label": `Sentiment ${sent.label}, ${fmtScore(sent.score)}`,
  });
}

/** A tiny inline SVG sparkline of sentiment scores in -1..1. */
function sparkline(sent, w = 72, hgt = 22) {
  const svg = s("svg", { class: `spark ${sent ? sent.label : "neutral"}`, width: w, height: hgt, viewBox: `0 0 ${w} ${hgt}`, role: "img" });
  const trend = sent ? sent.trend : [];
  svg.setAttribute("aria-label", trend.length ? `Sentiment trend over the last ${trend.length} utterances, now ${sent.label}` : "No sentiment yet");
  const y = (v) => 2 + ((1 - Math.max(-1, Math.min(1, v))) / 2) * (hgt - 4);
  svg.append(s("line", { class: "zero", x1: 0, x2: w, y1: y(0), y2: y(0) }));
  if (!trend.length) return svg;
  const pts = trend.length === 1 ? [trend[0], trend[0]] : trend;
  const step = (w - 4) / (pts.length - 1);
  const xy = pts.map((v, i) => [2 + i * step, y(v)]);
  const line = xy.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" ");
  svg.append(s("polygon", { class: "area", points: `2,${y(0)} ${line} ${(2 + (pts.length - 1) * step).toFixed(1)},${y(0)}` }));
  svg.append(s("polyline", { class: "path", points: line }));
  const [lx, ly] = xy[xy.length - 1];
  svg.append(s("circle", { class: "last", cx: lx, cy: ly, r: 2.4 }));
  return svg;
}

// ---- rendering -------------------------------------------------------------
// An event only updates the model and marks its call dirty; one animation frame then draws the
// rows in view (virtual.js). The order of the list and the grid is recomputed at most every
// ORDER_EVERY_MS (sooner when calls come or go, at once when the user changes a filter), so
// rows do not jump under the pointer and a frame's cost follows the visible rows.

const dirty = new Set();
let frame = 0;
let orderedAt = 0;
let reorder = true; // a call came, ended or went, or a filter changed
let stale = true; // the order may be out of date: something changed since it was computed
let orderTimer = 0;
let listOrder = [];
let gridOrder = [];
let summaryAt = 0;
let redrawAll = false; // every row in view: the selection or the latency threshold changed
function touch(id) {
  dirty.add(id);
  schedule();
}
function schedule() {
  if (!frame) frame = requestAnimationFrame(render);
}
/** The order is stale at once (a user's filter): redraw in the next frame. */
function reorderNow() {
  reorder = true;
  orderedAt = 0;
  schedule();
}
/** Every row in view may show something else (the open call, the threshold): check them all. */
function redrawVisible() {
  redrawAll = true;
  schedule();
}

function render() {
  frame = 0;
  for (const id of dirty) {
    const c = calls.get(id);
    if (!c) continue;
    const lat = latencyOf(c);
    derive(c, sentimentOf(c), lat, !!lat && lat.p90 > quality.warnMs); // quality.js's isSlow, once
  }
  const now = performance.now();
  if (dirty.size || reorder) stale = true;
  const wait = (reorder ? NEW_CALL_ORDER_MS : ORDER_EVERY_MS) - (now - orderedAt);
  const resort = stale && wait <= 0;
  if (resort) {
    orderedAt = now;
    reorder = false;
    stale = false;
    listOrder = ordered(calls.values(), "list", (c) => ui.showEnded || c.status !== "ended", MAX_ENDED_SHOWN);
    if (ui.view === "campaign") gridOrder = ordered(calls.values(), ui.sort, (c) => matches(c, ui.filter), MAX_ENDED_SHOWN);
  } else if (stale && !orderTimer) {
    orderTimer = setTimeout(() => { orderTimer = 0; schedule(); }, Math.max(16, wait));
  }
  const all = redrawAll;
  redrawAll = false;
  listView.render(listOrder, dirty, all);
  syncListFocus();
  if (ui.view === "campaign") {
    gridView.render(gridOrder, dirty, all);
    syncGridFocus();
  }
  if (resort || now - summaryAt >= SUMMARY_EVERY_MS) {
    summaryAt = now;
    renderSummary();
  }
  if (ui.selected && dirty.has(ui.selected)) renderListen();
  dirty.clear();
}

/** Counts, the campaign's tiles and the page title: a pass over the calls, twice a second at most. */
function renderSummary() {
  let live = 0, ended = 0, negative = 0, slow = 0, sum = 0, scored = 0;
  for (const c of calls.values()) {
    if (c.status === "ended") { ended += 1; continue; }
    live += 1;
    if (c.negative) negative += 1;
    if (c.slow) slow += 1;
    if (c.sent) { sum += c.sent.score; scored += 1; }
  }
  const attention = attentionCount(calls.values());
  setText($("live-count"), String(live));
  $("list-empty").hidden = listOrder.length > 0;
  const title = attention ? `(${attention}) ${BASE_TITLE}` : BASE_TITLE;
  if (document.title !== title) document.title = title;
  setText($("attention-count"), attention ? `${fmtCount(attention)} need${attention === 1 ? "s" : ""} attention` : "");
  if (ui.view !== "campaign") return;
  setText($("stat-live"), String(live));
  setText($("stat-ended"), String(ended));
  setText($("stat-sentiment"), scored ? fmtScore(sum / scored) : "–");
  setText($("stat-negative"), String(negative));
  renderTiles($, slow);
  const total = live + Math.min(ended, MAX_ENDED_SHOWN);
  setText($("campaign-count"), gridOrder.length === total
    ? `Showing all ${fmtCount(total)} calls`
    : `Showing ${fmtCount(gridOrder.length)} of ${fmtCount(total)} calls`);
  $("campaign-empty").hidden = gridOrder.length > 0;
  setText($("campaign-empty"), calls.size ? "No call matches these filters." : "Waiting for calls…");
  syncCampaignChoices();
}

const setText = (el, text) => { if (el.textContent !== text) el.textContent = text; };
const fmtCount = (n) => n.toLocaleString("en-US");
/** Apply `value` to an element's part only when it differs from what the part shows. */
const put = (shown, key, value, apply) => {
  if (shown[key] !== value) {
    shown[key] = value;
    apply(value);
  }
};
const sentKey = (c) => (c.sent ? `${c.sent.label}/${c.sent.score}/${c.sent.n}/${c.sent.trend.length}` : "");
const latKey = (c) => (c.lat ? `${c.lat.last}/${c.lat.p90}/${c.lat.n}/${quality.warnMs}` : "");
const stateKey = (c) => (c.status === "ended" ? `end:${statusText(c)}:${statusClass(c)}` : `agent:${c.agentState || ""}`);
function stateEl(c) {
  return c.status === "ended"
    ? h("span", { class: `badge ${statusClass(c)}`, text: statusText(c) })
    : agentEl(h("span", { class: "agent" }), c.agentState);
}
/** "Ava · Maria Garcia (CUS-1) · inbound +1555… → +1415…": the metadata a row has room for. */
function metaLine(c) {
  const m = c.meta || {};
  const parts = [];
  if (m.agent != null) parts.push(String(m.agent));
  if (m.customer != null) parts.push(String(m.customer));
  if (m.campaign != null) parts.push(String(m.campaign));
  const route = m.from != null || m.to != null ? `${m.from ?? "?"} → ${m.to ?? "?"}` : "";
  if (m.direction != null || route) parts.push([m.direction, route].filter(Boolean).join(" "));
  return parts.join(" · ");
}

// calls list
const listView = new Windowed($("list-scroll"), $("call-list"), {
  rowHeight: ROW_H, overscan: 4, padBottom: 12, build: buildRow, update: updateRow, onChange: schedule,
});

/** The parts a list row and a card share; `shown` remembers what each part draws. */
function commonParts(meta, state) {
  return {
    dot: h("span", { class: "status-dot", "aria-hidden": "true" }),
    cid: h("span", { class: "cid" }),
    lat: h("span", { class: "lat none" }),
    dur: h("span", { class: "dur" }),
    meta, state, shown: {},
  };
}

/** Bring the shared parts up to date with call `c`, touching only what changed. */
function updateCommon(li, r, c, full) {
  if (full) {
    r.shown = {};
    li.dataset.callId = c.id;
    r.cid.textContent = c.id;
  }
  const s = r.shown;
  put(s, "dot", statusClass(c), (v) => { r.dot.className = `status-dot ${v}`; });
  put(s, "dur", fmtDuration(durationOf(c)), (v) => { r.dur.textContent = v; });
  put(s, "meta", metaLine(c), (v) => { r.meta.textContent = v; r.meta.title = v; });
  put(s, "state", stateKey(c), () => r.state.replaceChildren(stateEl(c)));
  put(s, "lat", latKey(c), () => {
    const fresh = latencyBadge(h, c);
    r.lat.replaceWith(fresh);
    r.lat = fresh;
  });
  return s;
}

function buildRow() {
  const r = {
    ...commonParts(h("span", { class: "row-meta" }), h("span", { class: "row-state" })),
    snippet: h("span", { class: "snippet" }),
    sent: h("span", { class: "row-sent" }),
  };
  const btn = h("button", { class: "call-row", type: "button", tabindex: "-1" },
    r.dot, r.cid, r.lat, r.dur, r.meta, h("span", { class: "row-sub" }, r.state, r.snippet), r.sent);
  const li = h("li", {}, btn);
  li._r = r;
  btn.addEventListener("click", () => select(li._item));
  btn.addEventListener("focus", () => { ui.listFocus = li._item; });
  return li;
}

function updateRow(li, c, full) {
  const r = li._r;
  const btn = li.firstChild;
  if (full) btn.dataset.callId = c.id;
  const s = updateCommon(li, r, c, full);
  const ended = c.status === "ended";
  put(s, "cls", `call-row ${ended ? "ended" : "live"}${c.attention ? " attention" : ""}`, (v) => { btn.className = v; });
  put(s, "cur", String(ui.selected === c.id), (v) => btn.setAttribute("aria-current", v));
  put(s, "label", `Call ${c.id}, ${statusText(c)}${c.sent ? `, sentiment ${c.sent.label}` : ""}${c.agentState && !ended ? `, agent ${c.agentState}` : ""}${c.meta?.customer ? `, ${c.meta.customer}` : ""}`,
    (v) => btn.setAttribute("aria-label", v));
  put(s, "snippet", c.lastText || (ended ? "" : "Waiting for speech…"), (v) => { r.snippet.textContent = v; });
  put(s, "sent", sentKey(c), () => r.sent.replaceChildren(sparkline(c.sent, 56, 20), chip(c.sent, { compact: true })));
}

/** Roving tabindex over the rows in view: the focused call, else the open one, else the first. */
function syncListFocus() {
  syncRoving(listView, ui.listFocus);
}
function syncRoving(view, focusId) {
  const els = view.els;
  if (!els.length) return;
  const active = view.elementOf(focusId) || view.elementOf(ui.selected) || els[0];
  for (const el of els) {
    const btn = el.firstChild;
    const tab = el === active ? 0 : -1;
    if (btn.tabIndex !== tab) btn.tabIndex = tab;
  }
  // A focused element recycled for another call gives the focus to the call's new element.
  const focused = document.activeElement;
  if (focusId && view.rows.contains(focused) && focused.parentElement?._item !== focusId) {
    view.elementOf(focusId)?.firstChild.focus({ preventScroll: true });
  }
}

/** Move the keyboard focus to item `index` of `items` in `view`: scroll it in, draw, focus. */
function focusItem(view, items, index, remember) {
  if (!items.length) return;
  const i = Math.max(0, Math.min(items.length - 1, index));
  remember(items[i].id);
  view.reveal(i);
  if (frame) { cancelAnimationFrame(frame); frame = 0; }
  render();
  view.elementOf(items[i].id)?.firstChild.focus({ preventScroll: true });
}

function pageRows(view) {
  return Math.max(1, Math.floor(view.height / view.o.rowHeight) - 1);
}

$("call-list").addEventListener("keydown", (ev) => {
  const id = document.activeElement?.parentElement?._item;
  const i = listOrder.findIndex((c) => c.id === id);
  if (i < 0) return;
  const step = { ArrowDown: 1, ArrowUp: -1, PageDown: pageRows(listView), PageUp: -pageRows(listView) }[ev.key];
  const next = ev.key === "Home" ? 0 : ev.key === "End" ? listOrder.length - 1 : step == null ? null : i + step;
  if (next == null) return;
  ev.preventDefault();
  focusItem(listView, listOrder, next, (cid) => { ui.listFocus = cid; });
});

// listen-in
const tEls = new Map(); // "i:<seq>" | "p:<key>" → <li>
let renderedCall = null;

function select(id, { focus = false } = {}) {
  if (ui.selected && ui.selected !== id && stream) stream.unsubscribe(ui.selected);
  ui.selected = id;
  document.body.classList.toggle("listening", !!id);
  history.replaceState(null, "", id ? `#call=${encodeURIComponent(id)}` : location.pathname);
  if (id) {
    // Everything the server holds for this call (partials included), then live.
    // Events already seen through "*" are dropped by seq; the model has them.
    stream.subscribe(id, { since: 0 });
    const c = getCall(id);
    fetchMeta(c);
  }
  redrawVisible(); // aria-current follows the open call
  renderListen();
  if (focus && id) $("transcript").focus?.();
}

function renderListen() {
  const id = ui.selected;
  $("listen-empty").hidden = !!id;
  $("listen-body").hidden = !id;
  if (!id) return audio?.render(null);
  const c = getCall(id);
  const tr = $("transcript");
  if (renderedCall !== id) {
    tr.replaceChildren();
    tEls.clear();
    renderedCall = id;
    for (const it of c.items) it.fresh = false; // history: no landing animation
  }
  $("listen-call-id").textContent = c.id;
  setText($("listen-info"), metaLine(c));
  const st = $("listen-status");
  st.className = `badge ${statusClass(c)}`;
  st.textContent = statusText(c);
  $("listen-duration").textContent = fmtDuration(durationOf(c));
  $("listen-duration").dataset.dur = c.id;
  agentEl($("listen-agent"), c.agentState);
  renderControls($("controls"), c, canControl());
  audio?.render(c);
  const sent = sentimentOf(c);
  $("listen-sentiment").replaceChildren(chip(sent), sparkline(sent, 96, 26));

  const atBottom = tr.scrollHeight - tr.scrollTop - tr.clientHeight < 80;
  // Items (finals, tools, end) in seq order.
  for (let i = 0; i < c.items.length; i += 1) {
    const it = c.items[i];
    const key = `i:${it.seq}`;
    let el = tEls.get(key);
    if (el && it.changed) {
      const fresh = buildItem(it);
      el.replaceWith(fresh);
      tEls.set(key, fresh);
      it.changed = false;
      continue;
    }
    if (el) continue;
    el = buildItem(it);
    it.fresh = false;
    tEls.set(key, el);
    let before = null;
    for (let j = i + 1; j < c.items.length && !before; j += 1) before = tEls.get(`i:${c.items[j].seq}`) || null;
    tr.insertBefore(el, before || partialAnchor(tr));
  }
  // Partials (the typing indicator) at the bottom, one per utterance in flight.
  for (const [key, el] of [...tEls]) {
    if (key.startsWith("p:") && !c.partials.has(key.slice(2))) { el.remove(); tEls.delete(key); }
  }
  for (const p of [...c.partials.values()].sort((a, b) => a.seq - b.seq)) {
    const key = `p:${p.key}`;
    let el = tEls.get(key);
    if (!el) {
      el = buildPartial(p);
      tEls.set(key, el);
      tr.append(el);
    } else {
      el.querySelector(".text-body").textContent = p.text;
    }
  }
  if (atBottom) tr.scrollTop = tr.scrollHeight;
  $("jump").hidden = atBottom;
}

function partialAnchor(tr) {
  return tr.querySelector("li.partial");
}

function speakerName(sp) {
  return sp === "agent" ? "Agent" : sp === "user" ? "Caller" : human(sp || "speaker");
}

function buildItem(it) {
  if (it.kind === "turn") return turnItem(h, it);
  if (it.kind === "line") {
    const sent = it.sentiment;
    const li = h("li", { class: `line ${it.speaker === "user" ? "spk-user" : "spk-agent"}${it.fresh ? " fresh" : ""}`, "data-seq": it.seq, "data-kind": "final" },
      h("span", { class: "avatar", "aria-hidden": "true", text: it.speaker === "agent" ? "AI" : it.speaker === "user" ? "C" : "?" }),
      h("div", { class: "bubble" },
        h("div", { class: "who" },
          h("b", { text: speakerName(it.speaker) }),
          h("time", { datetime: it.ts ? new Date(it.ts).toISOString() : null, text: fmtTime(it.ts) }),
          sent ? h("span", { class: `chip ${sent.label}`, text: fmtScore(sent.score), title: `Sentiment ${sent.label}` }) : null,
          it.interrupted ? h("span", { class: "cut-off", text: "cut off" }) : null),
        h("p", { class: "text-body", text: it.text })));
    return li;
  }
  if (it.kind === "tool") {
    return h("li", { class: `tool${it.hasResult ? "" : " pending"}`, "data-seq": it.seq, "data-kind": "tool", "data-tool-call-id": it.toolCallId },
      h("div", { class: "tool-card" },
        h("span", { class: "tool-icon", "aria-hidden": "true", text: "ƒ" }),
        h("div", { class: "tool-call" }, h("b", { text: it.name }), h("code", { text: `(${compactJson(it.args ?? {})})` })),
        h("div", { class: "tool-result" },
          it.hasResult
            ? h("span", {}, h("span", { class: "arrow", text: "→ " }), h("code", { text: compactJson(it.result) }))
            : h("span", { text: "running…" }))));
  }
  if (it.kind === "control") {
    const state = !it.result ? "pending" : it.result.ok ? "ok" : "failed";
    const who = it.by.name || it.by.key_id || "";
    return h("li", { class: `supervisor ${state}`, "data-seq": it.seq, "data-kind": "control", "data-action": it.action },
      h("span", { class: "sup-icon", "aria-hidden": "true", text: "S" }),
      h("span", { class: "sup-text", text: requestText(it), title: who ? `Asked by ${who}` : null }),
      h("span", { class: "sup-result", text: resultText(it) }));
  }
  const why = it.reason ? ` — ${it.reason}` : "";
  return h("li", { class: "end", "data-seq": it.seq, "data-kind": "end" },
    h("span", { class: `badge ${BAD_END.has(it.status) ? "failed" : "ended"}`, text: human(it.status || "ended") }),
    h("span", { text: `Call ended · ${fmtDuration(it.durationMs)}${why}` }));
}

function buildPartial(p) {
  return h("li", { class: `line partial ${p.speaker === "user" ? "spk-user" : "spk-agent"}`, "aria-hidden": "true", "data-kind": "partial" },
    h("span", { class: "avatar", text: p.speaker === "agent" ? "AI" : "C" }),
    h("div", { class: "bubble" },
      h("div", { class: "who" }, h("b", { text: speakerName(p.speaker) }), h("span", { class: "typing" }, h("i"), h("i"), h("i"))),
      h("p", { class: "text-body", text: p.text })));
}

$("transcript").addEventListener("scroll", () => {
  const tr = $("transcript");
  $("jump").hidden = tr.scrollHeight - tr.scrollTop - tr.clientHeight < 80;
});
$("jump").addEventListener("click", () => {
  const tr = $("transcript");
  tr.scrollTop = tr.scrollHeight;
});
$("back").addEventListener("click", () => {
  const id = ui.selected;
  select(null);
  const btn = id && listView.elementOf(id)?.firstChild;
  if (btn) btn.focus();
});

// campaign
const gridView = new Windowed($("grid-scroll"), $("campaign-grid"), {
  rowHeight: CARD_H, minColumnWidth: CARD_MIN_W, gap: GRID_GAP, overscan: 2, padBottom: 12,
  build: buildCard, update: updateCard, onChange: schedule,
});

function buildCard() {
  const r = {
    ...commonParts(h("p", { class: "card-meta" }), h("div", { class: "card-state" })),
    chip: h("span", {}),
    spark: h("span", { class: "card-spark" }),
    snippet: h("p", { class: "snippet" }),
  };
  const btn = h("button", { class: "card", type: "button", tabindex: "-1" },
    h("div", { class: "card-top" }, r.dot, r.cid, r.dur),
    r.meta,
    h("div", { class: "card-mid" }, h("div", { class: "card-figures" }, r.chip, r.lat, r.state), r.spark),
    r.snippet);
  const li = h("li", {}, btn);
  li._r = r;
  btn.addEventListener("click", () => { setView("calls"); select(li._item); });
  btn.addEventListener("focus", () => { ui.gridFocus = li._item; });
  return li;
}

function updateCard(li, c, full) {
  const r = li._r;
  const btn = li.firstChild;
  const s = updateCommon(li, r, c, full);
  put(s, "cls", `card ${c.status === "ended" ? "ended" : ""} ${c.sent ? c.sent.label : ""}${c.attention ? " attention" : ""}`, (v) => { btn.className = v; });
  put(s, "label", `Call ${c.id}, ${statusText(c)}, sentiment ${c.sent ? c.sent.label : "unknown"}${c.meta?.customer ? `, ${c.meta.customer}` : ""}. Listen in.`,
    (v) => btn.setAttribute("aria-label", v));
  put(s, "snippet", c.lastText ? `“${c.lastText}”` : "Waiting for speech…", (v) => { r.snippet.textContent = v; });
  put(s, "sent", sentKey(c), () => {
    const fresh = chip(c.sent);
    r.chip.replaceWith(fresh);
    r.chip = fresh;
    r.spark.replaceChildren(sparkline(c.sent, 120, 36));
  });
}

function syncGridFocus() {
  syncRoving(gridView, ui.gridFocus);
}

$("campaign-grid").addEventListener("keydown", (ev) => {
  const id = document.activeElement?.parentElement?._item;
  const i = gridOrder.findIndex((c) => c.id === id);
  if (i < 0) return;
  const cols = gridView.columns;
  const step = {
    ArrowRight: 1, ArrowLeft: -1, ArrowDown: cols, ArrowUp: -cols,
    PageDown: cols * pageRows(gridView), PageUp: -cols * pageRows(gridView),
  }[ev.key];
  const next = ev.key === "Home" ? 0 : ev.key === "End" ? gridOrder.length - 1 : step == null ? null : i + step;
  if (next == null) return;
  ev.preventDefault();
  focusItem(gridView, gridOrder, next, (cid) => { ui.gridFocus = cid; });
});

// The campaign view's filters and sort: each change reorders at once.
const SENTIMENTS = ["negative", "neutral", "positive", "none"];
function setupCampaignTools() {
  const sort = $("sort");
  for (const [value, label] of Object.entries(SORTS)) sort.append(h("option", { value, text: label }));
  sort.value = ui.sort;
  sort.addEventListener("change", () => { ui.sort = sort.value; reorderNow(); });
  const status = $("filter-status");
  status.value = ui.filter.status;
  status.addEventListener("change", () => { ui.filter.status = status.value; reorderNow(); });
  const sentiment = $("filter-sentiment");
  for (const v of SENTIMENTS) sentiment.append(h("option", { value: v, text: v === "none" ? "no speech yet" : v }));
  sentiment.addEventListener("change", () => { ui.filter.sentiment = sentiment.value; reorderNow(); });
  $("filter-slow").addEventListener("change", (ev) => { ui.filter.slow = ev.target.checked; reorderNow(); });
  $("filter-campaign").addEventListener("change", (ev) => { ui.filter.campaign = ev.target.value; reorderNow(); });
  let typing = 0;
  $("filter-text").addEventListener("input", (ev) => {
    clearTimeout(typing);
    typing = setTimeout(() => { ui.filter.text = ev.target.value.trim().toLowerCase(); reorderNow(); }, 120);
  });
}

/** The campaign filter offers the campaigns the calls carry (metadata.campaign). */
const campaignsShown = new Set();
function syncCampaignChoices() {
  const select = $("filter-campaign");
  for (const name of campaigns) {
    if (campaignsShown.has(name)) continue;
    campaignsShown.add(name);
    select.append(h("option", { value: name, text: name }));
  }
}

// Durations tick once a second, in the rows in view only.
setInterval(() => {
  for (const view of [listView, gridView]) {
    for (const el of view.els) {
      const c = calls.get(el._item);
      if (c && c.status !== "ended") put(el._r.shown, "dur", fmtDuration(durationOf(c)), (v) => { el._r.dur.textContent = v; });
    }
  }
  const c = ui.selected && calls.get(ui.selected);
  if (c && c.status !== "ended") setText($("listen-duration"), fmtDuration(durationOf(c)));
}, 1000);

// tabs
function setView(view) {
  ui.view = view;
  for (const [v, tab, panel] of [["calls", "tab-calls", "view-calls"], ["campaign", "tab-campaign", "view-campaign"]]) {
    const on = v === view;
    $(tab).setAttribute("aria-selected", String(on));
    $(tab).tabIndex = on ? 0 : -1;
    $(panel).hidden = !on;
  }
  if (view === "campaign") {
    reorderNow();
    summaryAt = 0;
    renderChart($("fleet-chart")); // once shown: it is as wide as the view
  }
}
$("tab-calls").addEventListener("click", () => setView("calls"));
$("tab-campaign").addEventListener("click", () => setView("campaign"));
document.querySelector(".tabs").addEventListener("keydown", (ev) => {
  if (ev.key !== "ArrowLeft" && ev.key !== "ArrowRight") return;
  const next = ui.view === "calls" ? "campaign" : "calls";
  setView(next);
  $(`tab-${next}`).focus();
});
$("show-ended").addEventListener("change", (ev) => {
  ui.showEnded = ev.target.checked;
  reorderNow();
});
setupCampaignTools();

// Keys anywhere but in a field or a dialog: j / k open the next / previous call of the list,
// "/" goes to the campaign view's search, Escape closes the call that is open.
const FIELDS = new Set(["INPUT", "TEXTAREA", "SELECT"]);
document.addEventListener("keydown", (ev) => {
  const t = ev.target;
  if (ev.defaultPrevented || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if ((t && FIELDS.has(t.tagName)) || t?.isContentEditable || $("control-dialog").open) return;
  if (ev.key === "j" || ev.key === "k") {
    if (!listOrder.length) return;
    ev.preventDefault();
    const i = listOrder.findIndex((c) => c.id === ui.selected);
    const next = i < 0 ? 0 : Math.max(0, Math.min(listOrder.length - 1, i + (ev.key === "j" ? 1 : -1)));
    const id = listOrder[next].id;
    if (ui.view !== "calls") setView("calls");
    ui.listFocus = id;
    listView.reveal(next);
    select(id);
  } else if (ev.key === "/") {
    ev.preventDefault();
    setView("campaign");
    $("filter-text").focus();
  } else if (ev.key === "Escape" && ui.selected) {
    ev.preventDefault();
    $("back").click();
  }
});

// hearing the call (listen.js): only for a session whose token carries `listen`
let audio = null;
function canListen() {
  return tokenScopes(session.token).has("listen");
}

// supervisor actions: only for a session whose token carries `control`
function canControl() {
  return tokenScopes(session.token).has("control");
}
setupControls({
  toolbar: $("controls"),
  dialog: $("control-dialog"),
  status: $("control-status"),
  send: (action, args) => stream.control(ui.selected, action, args),
});

// ---- connection state ------------------------------------------------------

const CONN_TEXT = {
  connecting: "Connecting…",
  open: "Live",
  reconnecting: "Reconnecting…",
  token_expired: "Session ended",
  closed: "Disconnected",
  offline: "Offline",
};

function showConn(state) {
  ui.connState = state;
  const el = $("conn");
  el.dataset.state = state;
  $("conn-label").textContent = CONN_TEXT[state] || state;
  if (state === "reconnecting") {
    banner("Connection lost — reconnecting… Events of the calls on screen are caught up when it is back.", "warn", "Retry now", () => stream?.reconnectNow());
  } else if (state === "offline") {
    banner("You are offline. The dashboard reconnects when the network is back.", "warn");
  } else if (state === "token_expired") {
    banner("Session ended, open a new login link.", "error");
  } else if (state === "closed") {
    banner("Disconnected.", "error", "Reconnect", () => stream?.connect());
  } else {
    banner(null);
  }
}

function banner(text, kind = "warn", action = null, onAction = null) {
  const el = $("banner");
  el.hidden = !text;
  if (!text) return;
  el.dataset.kind = kind;
  $("banner-text").textContent = text;
  const btn = $("banner-action");
  btn.hidden = !action;
  btn.textContent = action || "";
  btn.onclick = onAction;
}

function sessionExpired() {
  session.clear();
  if (stream) stream.expire(); // ended as the server would end it: token_expired, no reconnect
  showConn("token_expired");
}

function gate(title, text) {
  $("gate-title").textContent = title;
  $("gate-text").textContent = text;
  $("gate").hidden = false;
  showConn("closed");
  banner(null);
}

// ---- start -------------------------------------------------------------------

/** Every live call of the account, page by page: start, sentiment, latency and metadata from
 * the store, so the rows are complete before their next event (no per-call request). */
async function loadLiveCalls() {
  let cursor = null;
  do {
    const body = await api(`/v1/calls?status=live&limit=${LIST_PAGE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    for (const m of body.calls || []) {
      const c = getCall(m.call_id);
      applyMeta(c, m);
      c.metaRequested = true;
      touch(c.id);
    }
    cursor = body.next_cursor || null;
  } while (cursor);
}

let relisting = 0;
/** Read the live calls again in a while: calls were first seen mid-call. One read for them all. */
function relistSoon() {
  relisting ||= setTimeout(() => {
    loadLiveCalls().catch(() => {}).finally(() => { relisting = 0; });
  }, 2000);
}

async function refreshStats() {
  try {
    const stats = await api("/v1/stats?window=15m");
    const thresholdMoved = stats.latency_warn_ms !== quality.warnMs;
    quality.stats = stats;
    quality.warnMs = stats.latency_warn_ms;
    if (thresholdMoved) for (const id of calls.keys()) touch(id); // colours and order follow it
    summaryAt = 0;
    schedule();
    if (ui.view === "campaign") renderChart($("fleet-chart"));
  } catch { /* the tiles keep their last figures; the next tick tries again */ }
}

async function fillFromRest({ call_id: callId, since }) {
  // The server no longer holds that history for `since`: take it from the store, page by page.
  try {
    await stream.fetchHistory(callId, since || 0, { get: api });
  } catch { /* nothing more we can do; the live stream goes on */ }
}

async function main() {
  const params = new URLSearchParams(location.search);
  const code = params.get("login");
  if (code) {
    params.delete("login");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
    try {
      await exchangeLoginCode(code);
    } catch (err) {
      if (!session.load()) {
        gate("This login link has expired", "Login links work once. Open the new link printed by the server, or run `callstream token` for a fresh one.");
        return;
      }
    }
  } else if (!session.load()) {
    gate("Open your login link", "This dashboard signs in with the one-time link that `callstream serve` and `callstream demo` print when they start.");
    return;
  }
  if (session.expiresAt && session.expiresAt * 1000 < Date.now()) {
    try {
      await refreshToken();
    } catch {
      showConn("token_expired");
      return;
    }
  }

  stream = new CallStream({
    token: session.token,
    getToken: refreshToken,
    backoff: { initialMs: 400, maxMs: 8000 },
  });
  window.callstream = stream; // handy from the console, and for the browser tests
  audio = setupListen({ stream, bar: $("audio"), canListen, fetchAuthed: apiFetch, token: currentToken });
  stream.on("state", ({ state }) => showConn(navigator.onLine === false && state === States.RECONNECTING ? "offline" : state));
  stream.on("event", onEvent);
  stream.on("history_unavailable", fillFromRest);
  stream.on("token_expired", () => {
    session.clear();
    showConn("token_expired");
  });
  stream.on("reconnected", () => loadLiveCalls().catch(() => {}));
  stream.on("error", (msg) => {
    const d = msg.data || {};
    const about = msg.call_id ?? d.call_id;
    if (about === "*" && d.code === "invalid_message" && wildcardTypes.includes("call.started")) {
      wildcardTypes = wildcardTypes.filter((t) => t !== "call.started"); // an older server
      stream.subscribe("*", { types: wildcardTypes });
    }
  });
  stream.subscribe("*", { types: wildcardTypes });
  setInterval(pruneEnded, 5000);
  const m = /^#call=(.+)$/.exec(location.hash);
  stream.connect();
  window.addEventListener("online", () => stream.reconnectNow());
  window.addEventListener("offline", () => { if (ui.connState !== "open") showConn("offline"); });
  if (m) select(decodeURIComponent(m[1]));
  setupSearch({ api, open: (id) => select(id, { focus: true }) });
  refreshStats();
  setInterval(refreshStats, STATS_EVERY_MS);
  try {
    await loadLiveCalls();
  } catch (err) {
    if (!err.expired) banner("Could not load the calls list; live updates continue.", "warn");
  }
  render();
}

main();

// For page modules that build on the dashboard (search.js mounts in #search-slot): open a call,
// switch view.
export { select, setView };
