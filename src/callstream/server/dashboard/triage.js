// Which calls the supervisor sees, in which order: the campaign view's filters and sorts, the
// list's order, and which calls need a human (the count in the page title). Pure functions over
// the app's call objects (no DOM), so a frame's ordering costs a sort of cached numbers.

/** The metadata keys the dashboard shows (docs/protocol.md, Call metadata), in the order it shows them. */
export const META_KEYS = ["agent", "customer", "campaign", "direction", "from", "to"];

/** How the campaign view orders its calls; the first is the default. */
export const SORTS = {
  attention: "Needs attention first",
  sentiment: "Most negative first",
  latency: "Slowest answers first",
  newest: "Newest first",
  longest: "Longest running first",
};

/** Keep a call's cached figures in step with its events: called for each changed call, at most
 * once a frame, so sorting and filtering never recompute them. */
export function derive(c, sent, lat, slow) {
  c.sent = sent;
  c.lat = lat;
  c.slow = slow;
  c.negative = sent?.label === "negative";
  c.attention = c.status !== "ended" && (slow || c.negative);
  const m = c.meta || {};
  c.haystack = [c.id, c.lastText || "", ...META_KEYS.map((k) => (m[k] == null ? "" : String(m[k])))].join("\n").toLowerCase();
}

/** Whether a call passes the campaign view's filters. */
export function matches(c, f) {
  if (f.status === "live" && c.status === "ended") return false;
  if (f.status === "ended" && c.status !== "ended") return false;
  if (f.status === "attention" && !c.attention) return false;
  if (f.sentiment && (c.sent?.label || "none") !== f.sentiment) return false;
  if (f.slow && !c.slow) return false;
  if (f.campaign && (c.meta?.campaign ?? "") !== f.campaign) return false;
  if (f.text && !c.haystack.includes(f.text)) return false;
  return true;
}

const started = (c) => c.startedAt || c.firstSeen;
const score = (c) => (c.sent ? c.sent.score : 0);
const p90 = (c) => (c.lat ? c.lat.p90 : -1);
const COMPARE = {
  list: (a, b) => b.slow - a.slow || started(b) - started(a), // the calls list: slow ones, then newest
  attention: (a, b) => b.attention - a.attention || b.slow - a.slow || score(a) - score(b) || started(b) - started(a),
  sentiment: (a, b) => (a.sent == null) - (b.sent == null) || score(a) - score(b) || started(b) - started(a),
  latency: (a, b) => p90(b) - p90(a) || started(b) - started(a),
  newest: (a, b) => started(b) - started(a),
  longest: (a, b) => started(a) - started(b),
};

/** Live calls in `sort` order (a key of SORTS, or "list"), then ended ones (the most recently ended first, at most `maxEnded`). */
export function ordered(calls, sort, keep, maxEnded) {
  const live = [], ended = [];
  for (const c of calls) if (keep(c)) (c.status === "ended" ? ended : live).push(c);
  live.sort(COMPARE[sort] || COMPARE.attention);
  ended.sort((a, b) => (b.endedAt || 0) - (a.endedAt || 0));
  if (ended.length > maxEnded) ended.length = maxEnded;
  return live.concat(ended);
}

/** Live calls that need a human: over the latency threshold, or negative. */
export function attentionCount(calls) {
  let n = 0;
  for (const c of calls) if (c.attention) n += 1;
  return n;
}
