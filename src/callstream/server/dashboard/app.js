// callstream dashboard: live calls, listen-in, campaign sentiment and turn latency (quality.js).
// Plain ES module on top of callstream.js; no build step, no dependencies.
//
// Auth: the page is opened as /?login=<one-time code>. The code is exchanged
// for a short-lived JWT (POST /v1/login), removed from the URL, kept in
// sessionStorage (this tab only) and refreshed before expiry
// (POST /v1/login/refresh). The page never sees an API key.

import { CallStream, States } from "./callstream.js";
import { isSlow, latencyBadge, quality, recordTurn, renderChart, renderTiles, turnItem } from "./quality.js";
import { renderControls, requestText, resultText, setupControls, tokenScopes } from "./supervise.js";
import { setupSearch } from "./search.js";

const SESSION_KEY = "callstream.session";
// The campaign subscription ("*") carries what the list and the sparklines
// need; partials and function calls come with the per-call listen-in subscription.
const WILDCARD_TYPES = ["transcript.final", "agent.state", "call.ended"];
const TREND_POINTS = 24;
const MAX_ENDED_SHOWN = 50;
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

/** GET a JSON API path with the JWT; one refresh-and-retry on 401. */
async function api(path) {
  for (let attempt = 0; ; attempt += 1) {
    const r = await fetch(path, { headers: { Authorization: `Bearer ${session.token}` } });
    if (r.status === 401 && attempt === 0) {
      try {
        await refreshToken();
      } catch (err) {
        if (err.expired) sessionExpired();
        throw err;
      }
      continue;
    }
    if (!r.ok) throw Object.assign(new Error(`${path}: ${r.status}`), { status: r.status });
    return r.json();
  }
}

// ---- model -----------------------------------------------------------------

/** @type {Map<string, any>} */
const calls = new Map();
const ui = { selected: null, view: "calls", showEnded: true, connState: "connecting" };
let stream = null;

function getCall(id) {
  let c = calls.get(id);
  if (!c) {
    c = {
      id, status: "live", startedAt: null, endedAt: null, durationMs: null, endStatus: null,
      reason: null, agentState: null, agentSeq: 0, items: [], bySeq: new Map(),
      partials: new Map(), finalUtterances: new Set(), lastFinalSeqBySpeaker: {},
      tools: new Map(), pendingResults: new Map(), controls: new Map(), earlyOutcomes: new Map(),
      lastText: "", serverSentiment: null,
      metaRequested: false, firstSeen: Date.now(),
    };
    calls.set(id, c);
  }
  return c;
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
  if (!c.metaRequested && (c.startedAt == null || msg.seq > 1)) {
    fetchMeta(c);
    // First seen mid-call through "*": fetch what it said so far.
    if (msg.seq > 1 && !stream.subscriptions.has(c.id)) stream.catchUp(c.id, 0);
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

const dirty = new Set();
let frame = 0;
function touch(id) {
  dirty.add(id);
  if (!frame) frame = requestAnimationFrame(render);
}

function sortedCalls() {
  const live = [], ended = [];
  for (const c of calls.values()) (c.status === "ended" ? ended : live).push(c);
  // Calls whose turns run over the latency threshold first: they need a human now.
  live.sort((a, b) => isSlow(b) - isSlow(a) || (b.startedAt || b.firstSeen) - (a.startedAt || a.firstSeen));
  ended.sort((a, b) => (b.endedAt || 0) - (a.endedAt || 0));
  return { live, ended: ended.slice(0, MAX_ENDED_SHOWN) };
}

const cardDirty = new Set();
function render() {
  frame = 0;
  for (const id of dirty) cardDirty.add(id);
  renderList();
  if (ui.view === "campaign") renderCampaign();
  if (ui.selected && dirty.has(ui.selected)) renderListen();
  dirty.clear();
}

// calls list
const rows = new Map();
function renderList() {
  const { live, ended } = sortedCalls();
  const shown = ui.showEnded ? [...live, ...ended] : live;
  $("live-count").textContent = String(live.length);
  $("list-empty").hidden = shown.length > 0;
  syncKeyed($("call-list"), rows, shown, buildRow, (li, c) => {
    if (dirty.has(c.id) || !li.isConnected) updateRow(li, c);
  });
  syncRovingTabindex();
}

// One element per call of `shown`, in its order, inside `parent`: `els` (call id → element)
// keeps them across renders; `build` makes a missing one, `refresh(el, call, built)` brings one
// up to date. Elements of calls no longer shown go. The children are reordered only when the
// order changed, and keyboard focus stays where it was.
function syncKeyed(parent, els, shown, build, refresh) {
  const keep = new Set(shown.map((c) => c.id));
  for (const [id, el] of els) if (!keep.has(id)) { el.remove(); els.delete(id); }
  for (const c of shown) {
    let el = els.get(c.id);
    const built = !el;
    if (built) {
      el = build(c);
      els.set(c.id, el);
    }
    refresh(el, c, built);
  }
  const current = [...parent.children];
  if (current.length !== shown.length || shown.some((c, i) => current[i] !== els.get(c.id))) {
    const focused = document.activeElement;
    parent.replaceChildren(...shown.map((c) => els.get(c.id)));
    if (focused && parent.contains(focused)) focused.focus({ preventScroll: true });
  }
}

function buildRow(c) {
  const btn = h("button", { class: "call-row", type: "button", "data-call-id": c.id });
  btn.addEventListener("click", () => select(c.id));
  return h("li", { "data-call-id": c.id }, btn);
}

function updateRow(li, c) {
  const btn = li.firstChild;
  const sent = sentimentOf(c);
  btn.className = `call-row ${c.status === "ended" ? "ended" : "live"}`;
  btn.setAttribute("aria-current", String(ui.selected === c.id));
  btn.setAttribute("aria-label", `Call ${c.id}, ${statusText(c)}${sent ? `, sentiment ${sent.label}` : ""}${c.agentState ? `, agent ${c.agentState}` : ""}`);
  btn.replaceChildren(
    h("span", { class: `status-dot ${statusClass(c)}`, "aria-hidden": "true" }),
    h("span", { class: "cid", text: c.id }),
    h("span", { class: "dur", "data-dur": c.id, text: fmtDuration(durationOf(c)) }),
    h("span", { class: "row-sub" },
      c.status === "ended"
        ? h("span", { class: `badge ${statusClass(c)}`, text: statusText(c) })
        : agentEl(h("span", { class: "agent" }), c.agentState),
      h("span", { class: "snippet", text: c.lastText || (c.status === "ended" ? "" : "Waiting for speech…") })),
    h("span", { class: "row-sent" }, sparkline(sent, 56, 20), chip(sent, { compact: true })),
    latencyBadge(h, c),
  );
}

function listButtons() {
  return [...$("call-list").querySelectorAll(".call-row")];
}
function syncRovingTabindex() {
  const buttons = listButtons();
  const active = buttons.find((b) => b === document.activeElement)
    || buttons.find((b) => b.dataset.callId === ui.selected) || buttons[0];
  for (const b of buttons) b.tabIndex = b === active ? 0 : -1;
}
$("call-list").addEventListener("keydown", (ev) => {
  const buttons = listButtons();
  const i = buttons.indexOf(document.activeElement);
  if (i < 0) return;
  const next = { ArrowDown: i + 1, ArrowUp: i - 1, Home: 0, End: buttons.length - 1 }[ev.key];
  if (next == null) return;
  ev.preventDefault();
  const target = buttons[Math.max(0, Math.min(buttons.length - 1, next))];
  for (const b of buttons) b.tabIndex = b === target ? 0 : -1;
  target.focus();
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
  for (const [cid, li] of rows) updateRow(li, calls.get(cid));
  renderListen();
  if (focus && id) $("transcript").focus?.();
}

function renderListen() {
  const id = ui.selected;
  $("listen-empty").hidden = !!id;
  $("listen-body").hidden = !id;
  if (!id) return;
  const c = getCall(id);
  const tr = $("transcript");
  if (renderedCall !== id) {
    tr.replaceChildren();
    tEls.clear();
    renderedCall = id;
    for (const it of c.items) it.fresh = false; // history: no landing animation
  }
  $("listen-call-id").textContent = c.id;
  const st = $("listen-status");
  st.className = `badge ${statusClass(c)}`;
  st.textContent = statusText(c);
  $("listen-duration").textContent = fmtDuration(durationOf(c));
  $("listen-duration").dataset.dur = c.id;
  agentEl($("listen-agent"), c.agentState);
  renderControls($("controls"), c, canControl());
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
  const btn = id && rows.get(id)?.firstChild;
  if (btn) btn.focus();
});

// campaign
const cards = new Map();
function renderCampaign() {
  const { live, ended } = sortedCalls();
  const all = [...live, ...ended];
  const sents = new Map(all.map((c) => [c.id, sentimentOf(c)]));
  const liveScores = live.map((c) => sents.get(c.id)).filter(Boolean);
  $("stat-live").textContent = String(live.length);
  $("stat-ended").textContent = String([...calls.values()].filter((c) => c.status === "ended").length);
  const avg = liveScores.length ? liveScores.reduce((a, x) => a + x.score, 0) / liveScores.length : null;
  $("stat-sentiment").textContent = avg == null ? "–" : fmtScore(avg);
  $("stat-negative").textContent = String(live.filter((c) => sents.get(c.id)?.label === "negative").length);
  renderTiles($, live.filter(isSlow).length);
  const score = (c) => (sents.get(c.id) ? sents.get(c.id).score : 0);
  // Slow and negative calls first (they need a human), each group most negative first.
  const flagged = (c) => isSlow(c) || sents.get(c.id)?.label === "negative";
  const order = [...live.sort((a, b) => flagged(b) - flagged(a) || score(a) - score(b)), ...ended.slice(0, 12)];
  $("campaign-empty").hidden = order.length > 0;
  syncKeyed($("campaign-grid"), cards, order, buildCard, (li, c, built) => {
    if (built || cardDirty.has(c.id)) updateCard(li, c, sents.get(c.id));
  });
  cardDirty.clear();
}

function buildCard(c) {
  const btn = h("button", { class: "card", type: "button" });
  btn.addEventListener("click", () => { setView("calls"); select(c.id); });
  return h("li", { "data-call-id": c.id }, btn);
}

function updateCard(li, c, sent) {
  const btn = li.firstChild;
  btn.className = `card ${c.status === "ended" ? "ended" : ""} ${sent ? sent.label : ""}`;
  btn.setAttribute("aria-label", `Call ${c.id}, ${statusText(c)}, sentiment ${sent ? sent.label : "unknown"}. Listen in.`);
  btn.replaceChildren(
    h("div", { class: "card-top" },
      h("span", { class: `status-dot ${statusClass(c)}`, "aria-hidden": "true" }),
      h("span", { class: "cid", text: c.id }),
      h("span", { class: "dur", "data-dur": c.id, text: fmtDuration(durationOf(c)) })),
    h("div", { class: "card-mid" },
      h("div", {}, chip(sent), latencyBadge(h, c), h("div", { class: "card-state" }, c.status === "ended"
        ? h("span", { class: `badge ${statusClass(c)}`, text: statusText(c) })
        : agentEl(h("span", { class: "agent" }), c.agentState))),
      sparkline(sent, 120, 36)),
    h("p", { class: "snippet", text: c.lastText ? `“${c.lastText}”` : "Waiting for speech…" }));
}

// Durations tick once a second without re-rendering rows.
setInterval(() => {
  for (const el of document.querySelectorAll("[data-dur]")) {
    const c = calls.get(el.dataset.dur);
    if (c && c.status !== "ended") el.textContent = fmtDuration(durationOf(c));
  }
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
    renderCampaign();
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
  renderList();
});

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
  if (stream) stream.close();
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

async function loadLiveCalls() {
  const body = await api("/v1/calls?status=live&limit=100");
  for (const m of body.calls || []) {
    const c = getCall(m.call_id);
    applyMeta(c, m);
    c.metaRequested = true;
    if (!stream.subscriptions.has(c.id) && stream.lastSeq(c.id) === 0) stream.catchUp(c.id, 0);
    touch(c.id);
  }
}

async function refreshStats() {
  try {
    const stats = await api("/v1/stats?window=15m");
    const thresholdMoved = stats.latency_warn_ms !== quality.warnMs;
    quality.stats = stats;
    quality.warnMs = stats.latency_warn_ms;
    if (thresholdMoved) for (const id of calls.keys()) touch(id); // colours and order follow it
    if (ui.view === "campaign") {
      renderCampaign();
      renderChart($("fleet-chart"));
    }
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
  stream.on("state", ({ state }) => showConn(navigator.onLine === false && state === States.RECONNECTING ? "offline" : state));
  stream.on("event", onEvent);
  stream.on("history_unavailable", fillFromRest);
  stream.on("token_expired", () => {
    session.clear();
    showConn("token_expired");
  });
  stream.on("reconnected", () => loadLiveCalls().catch(() => {}));
  stream.subscribe("*", { types: WILDCARD_TYPES });
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
