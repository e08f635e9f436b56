// Unit tests for the browser client's reconnect/resubscribe logic.
// Run: node --test tests/js/callstream.test.mjs   (Node 20, no npm packages)
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  CallStream, States, backoffDelay, tokenExpiry, isAuthError, restBase,
} from "../../src/callstream/server/dashboard/callstream.js";

// ---- fakes -------------------------------------------------------------------

class FakeWebSocket {
  static all = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    FakeWebSocket.all.push(this);
  }
  send(data) { this.sent.push(JSON.parse(data)); }
  close(code = 1000) { this.readyState = 3; this.closedWith = code; }
  // the "server" side
  accept() { this.readyState = 1; this.onopen?.({}); }
  push(msg) { this.onmessage?.({ data: JSON.stringify(msg) }); }
  drop(code = 1006) { this.readyState = 3; this.onclose?.({ code }); }
  take() { const out = this.sent; this.sent = []; return out; }
}

class FakeClock {
  constructor() { this.t = 1_700_000_000_000; this.timers = new Map(); this.next = 1; }
  now = () => this.t;
  setTimeout = (fn, ms) => { const id = this.next++; this.timers.set(id, { at: this.t + ms, fn }); return id; };
  clearTimeout = (id) => { this.timers.delete(id); };
  pendingDelays() { return [...this.timers.values()].map((x) => x.at - this.t).sort((a, b) => a - b); }
  async advance(ms) {
    const end = this.t + ms;
    for (;;) {
      const due = [...this.timers.entries()].filter(([, x]) => x.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      this.timers.delete(due[0]);
      this.t = due[1].at;
      due[1].fn();
      await flush();
    }
    this.t = end;
    await flush();
  }
}

const flush = () => new Promise((resolve) => setImmediate(resolve));
const b64url = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
const jwt = (expSeconds, id = "t") => `${b64url({ alg: "HS256" })}.${b64url({ sub: "acct", exp: expSeconds, jti: id })}.sig`;
const ev = (callId, seq, type = "transcript.final", data = { speaker: "user", text: `line ${seq}`, is_final: true }) =>
  ({ type, call_id: callId, seq, ts: 1, data });
const subscribed = (callId, seq, status = "live", replayed = 0) =>
  ({ type: "subscribed", call_id: callId, data: { call_id: callId, status, seq, replayed } });

function setup(opts = {}) {
  FakeWebSocket.all = [];
  const clock = new FakeClock();
  const tokenExp = Math.floor(clock.t / 1000) + 900;
  const stream = new CallStream({
    url: "ws://test/v1/events",
    token: jwt(tokenExp),
    WebSocket: FakeWebSocket,
    timers: clock,
    now: clock.now,
    random: () => 0.5,
    pingIntervalMs: 0,
    ...opts,
  });
  const states = [];
  stream.on("state", ({ state }) => states.push(state));
  const received = [];
  stream.on("event", (m) => received.push(`${m.call_id}#${m.seq}`));
  const sock = () => FakeWebSocket.all.at(-1);
  return { stream, clock, states, received, sock };
}

// ---- tests -------------------------------------------------------------------

test("connects with the JWT as the bearer subprotocol pair and subscribes on open", async () => {
  const { stream, states, sock } = setup();
  stream.subscribe("call_a");
  stream.connect();
  await flush();
  assert.equal(sock().url, "ws://test/v1/events");
  assert.deepEqual(sock().protocols, ["bearer", stream.token]);
  assert.ok(!sock().url.includes("token"), "the token stays out of the URL");
  sock().accept();
  assert.deepEqual(sock().take(), [{ type: "subscribe", call_id: "call_a" }]);
  assert.deepEqual(states, [States.CONNECTING, States.OPEN]);
});

test("dispatches typed events and tracks the last seq per call", async () => {
  const { stream, sock } = setup();
  const finals = [];
  stream.on("transcript.final", (m) => finals.push(m.data.text));
  stream.subscribe("call_a").connect();
  await flush();
  sock().accept();
  sock().push(ev("call_a", 1));
  sock().push(ev("call_a", 2, "transcript.partial", { speaker: "user", text: "hel", is_final: false }));
  sock().push(ev("call_a", 3));
  assert.deepEqual(finals, ["line 1", "line 3"]);
  assert.equal(stream.lastSeq("call_a"), 3);
});

test("reconnects and resubscribes explicit calls with since = last seq, types kept", async () => {
  const { stream, clock, states, received, sock } = setup();
  stream.subscribe("call_a", { types: ["transcript.final"] }).connect();
  await flush();
  const first = sock();
  first.accept();
  first.take();
  first.push(ev("call_a", 1));
  first.push(ev("call_a", 4));
  first.drop(1001);
  assert.equal(stream.state, States.RECONNECTING);
  await clock.advance(60_000);
  const second = sock();
  assert.notEqual(second, first);
  second.accept();
  assert.deepEqual(second.take(), [{ type: "subscribe", call_id: "call_a", since: 4, types: ["transcript.final"] }]);
  second.push(ev("call_a", 4)); // overlap: dropped
  second.push(ev("call_a", 5));
  assert.deepEqual(received, ["call_a#1", "call_a#4", "call_a#5"]);
  assert.deepEqual(states, [States.CONNECTING, States.OPEN, States.RECONNECTING, States.OPEN]);
});

test("a replay interrupted by another drop is asked for again from its since", async () => {
  const { stream, clock, sock } = setup();
  stream.subscribe("call_a", { since: 0 }).connect();
  await flush();
  sock().accept();
  assert.deepEqual(sock().take(), [{ type: "subscribe", call_id: "call_a", since: 0 }]);
  sock().push(ev("call_a", 1));
  sock().push(ev("call_a", 2));
  sock().push(subscribed("call_a", 2, "live", 2));
  sock().push(ev("call_a", 3));
  sock().drop();
  await clock.advance(60_000);
  sock().accept();
  assert.deepEqual(sock().take(), [{ type: "subscribe", call_id: "call_a", since: 3 }]);
  sock().push(ev("call_a", 4)); // replay in flight …
  sock().drop(); // … and the socket drops before "subscribed"
  await clock.advance(60_000);
  sock().accept();
  assert.deepEqual(sock().take(), [{ type: "subscribe", call_id: "call_a", since: 3 }]);
});

test("a live-only subscription resumes from the seq announced by subscribed", async () => {
  const { stream, clock, sock } = setup();
  stream.subscribe("call_a").connect();
  await flush();
  sock().accept();
  sock().push(subscribed("call_a", 17));
  sock().drop();
  await clock.advance(60_000);
  sock().accept();
  assert.deepEqual(sock().take(), [{ type: "subscribe", call_id: "call_a", since: 17 }]);
});

test('"*" is resubscribed without since; live calls it saw are caught up, then released', async () => {
  const { stream, clock, received, sock } = setup();
  stream.subscribe("*", { types: ["transcript.final", "call.ended"] });
  stream.subscribe("call_x");
  stream.connect();
  await flush();
  sock().accept();
  assert.throws(() => stream.subscribe("*", { since: 3 }));
  sock().take();
  sock().push(ev("call_x", 2));
  sock().push(ev("call_b", 7));
  sock().push(ev("call_c", 3));
  sock().push(ev("call_c", 4, "call.ended", { status: "completed", duration_ms: 1000 }));
  sock().drop();
  await clock.advance(60_000);
  sock().accept();
  const types = ["transcript.final", "call.ended"];
  assert.deepEqual(sock().take(), [
    { type: "subscribe", call_id: "call_x", since: 2 }, // explicit: gapless
    { type: "subscribe", call_id: "call_b", since: 7, types }, // catch-up of a live call seen through "*"
    { type: "subscribe", call_id: "*", types }, // call_c ended: nothing to catch up
  ]);
  sock().push(ev("call_b", 8));
  sock().push(subscribed("call_b", 8, "live", 1));
  assert.deepEqual(sock().take(), [{ type: "unsubscribe", call_id: "call_b" }]);
  sock().push(subscribed("*", 0));
  assert.deepEqual(sock().take(), [], "an explicit call is never released");
  assert.ok(received.includes("call_b#8"));
});

test("catchUp() fetches a call's history without staying subscribed", async () => {
  const { stream, sock } = setup();
  stream.subscribe("*").connect();
  await flush();
  sock().accept();
  sock().take();
  stream.catchUp("call_q", 0);
  assert.deepEqual(sock().take(), [{ type: "subscribe", call_id: "call_q", since: 0 }]);
  sock().push(ev("call_q", 1));
  sock().push(subscribed("call_q", 1));
  assert.deepEqual(sock().take(), [{ type: "unsubscribe", call_id: "call_q" }]);
});

test("events delivered twice (replay overlap, '*' plus explicit) are dispatched once", async () => {
  const { stream, received, sock } = setup();
  stream.subscribe("*").subscribe("call_a", { since: 0 }).connect();
  await flush();
  sock().accept();
  for (const seq of [3, 1, 2, 3, 2, 4]) sock().push(ev("call_a", seq));
  assert.deepEqual(received, ["call_a#3", "call_a#1", "call_a#2", "call_a#4"]);
  assert.equal(stream.lastSeq("call_a"), 4);
});

test("history_unavailable is emitted and the subscription goes on live", async () => {
  const { stream, clock, sock } = setup();
  const gaps = [];
  stream.on("history_unavailable", (d) => gaps.push(d));
  stream.subscribe("call_a").connect();
  await flush();
  sock().accept();
  sock().push(ev("call_a", 10));
  sock().drop();
  await clock.advance(60_000);
  sock().accept();
  sock().take();
  sock().push({ type: "error", call_id: "call_a", data: { code: "history_unavailable", message: "too old" } });
  assert.deepEqual(gaps, [{ call_id: "call_a", since: 10, message: "too old" }]);
  assert.deepEqual(sock().take(), [{ type: "subscribe", call_id: "call_a" }]);
  // events fetched over REST go through the same de-duplication
  stream.ingest(ev("call_a", 11));
  stream.ingest(ev("call_a", 11));
  assert.equal(stream.lastSeq("call_a"), 11);
});

// A REST server holding call_a's stored events after seq 10 up to `last`, in pages of `page`.
function restPages(last, page) {
  const asked = [];
  const fetch = async (url, init) => {
    asked.push({ url, auth: init.headers.Authorization });
    const since = Number(new URL(url).searchParams.get("since"));
    const seqs = [];
    for (let s = Math.max(since, 10) + 1; s <= last && seqs.length <= page; s += 1) seqs.push(s);
    const events = seqs.slice(0, page).map((s) => ({ ...ev("call_a", s), call_id: undefined }));
    const body = { events, next_since: seqs.length > page ? seqs[page - 1] : null };
    return { ok: true, status: 200, json: async () => body };
  };
  return { asked, fetch };
}

test("fetchHistory follows next_since page by page and ingests every event once, in order", async () => {
  const rest = restPages(2_510, 1_000);
  const { stream, received } = setup({ fetch: rest.fetch, url: "wss://calls.example/v1/events" });
  const fetched = await stream.fetchHistory("call_a", 10);
  assert.equal(fetched, 2_500);
  assert.deepEqual(rest.asked.map((a) => a.url), [10, 1_010, 2_010].map(
    (s) => `https://calls.example/v1/calls/call_a/events?since=${s}`));
  assert.ok(rest.asked.every((a) => a.auth === `Bearer ${stream.token}`));
  assert.equal(received.length, 2_500);
  assert.deepEqual([received[0], received.at(-1)], ["call_a#11", "call_a#2510"]);
  assert.equal(stream.lastSeq("call_a"), 2_510);
});

test("fetchHistory uses the app's own get, and stops at an answer without next_since", async () => {
  const paths = [];
  const { stream, received } = setup();
  const get = async (path) => {
    paths.push(path);
    return { call_id: "call a", events: [ev("call a", 4), ev("call a", 5)] }; // a server before paging
  };
  assert.equal(await stream.fetchHistory("call a", 3, { get }), 2);
  assert.deepEqual(paths, ["/v1/calls/call%20a/events?since=3"]);
  assert.deepEqual(received, ["call a#4", "call a#5"]);
  const refusing = setup({ fetch: async () => ({ ok: false, status: 404, json: async () => ({}) }) });
  await assert.rejects(refusing.stream.fetchHistory("gone"), (err) => err.status === 404);
  assert.equal(restBase("ws://h:8080/v1/events"), "http://h:8080");
});

test("backoff is exponential, capped, and jittered", () => {
  const cfg = { initialMs: 500, maxMs: 8000, factor: 2 };
  assert.equal(backoffDelay(0, cfg, () => 1), 500);
  assert.equal(backoffDelay(0, cfg, () => 0), 250);
  assert.equal(backoffDelay(3, cfg, () => 1), 4000);
  assert.equal(backoffDelay(10, cfg, () => 1), 8000);
  assert.equal(backoffDelay(10, cfg, () => 0), 4000);
});

test("consecutive failed connects back off further; a successful open resets it", async () => {
  const { stream, clock, sock } = setup({ backoff: { initialMs: 1000, maxMs: 8000 } });
  stream.connect();
  await flush();
  const delays = [];
  for (let i = 0; i < 6; i += 1) {
    sock().drop(1006); // refused: server down
    delays.push(clock.pendingDelays()[0]);
    await clock.advance(delays.at(-1));
  }
  assert.deepEqual(delays, [750, 1500, 3000, 6000, 6000, 6000]); // random() = 0.5: 3/4 of the cap
  sock().accept();
  sock().drop(1001);
  assert.equal(clock.pendingDelays()[0], 750);
});

test("refreshes the JWT before it expires and sends it as auth on the open socket", async () => {
  let n = 0;
  const clock0 = new FakeClock();
  const exp = Math.floor(clock0.t / 1000) + 120;
  const { stream, clock, sock } = setup({
    token: jwt(exp),
    getToken: async () => jwt(exp + 900 * ++n, `r${n}`),
  });
  const refreshed = [];
  stream.on("token_refreshed", (d) => refreshed.push(d.expiresAt));
  stream.connect();
  await flush();
  sock().accept();
  sock().take();
  assert.equal(clock.pendingDelays()[0], 90_000); // 120 s left: refresh with a quarter to spare
  await clock.advance(90_000);
  const [auth] = sock().take();
  assert.equal(auth.type, "auth");
  assert.equal(tokenExpiry(auth.token), exp + 900);
  assert.equal(stream.token, auth.token);
  assert.deepEqual(refreshed, [exp + 900]);
  assert.equal(FakeWebSocket.all.length, 1, "no reconnect needed");
});

test("an expired token at connect time is replaced through getToken first", async () => {
  const fresh = jwt(Math.floor(Date.now() / 1000) + 10_000_000_000);
  const { stream, sock } = setup({ token: jwt(1), getToken: async () => fresh });
  stream.connect();
  await flush();
  assert.deepEqual(sock().protocols, ["bearer", fresh]);
});

test("close 4001 gets a fresh token and reconnects", async () => {
  let n = 0;
  const { stream, clock, sock } = setup({ getToken: async () => jwt(Math.floor(Date.now() / 1000) + 10_000_000_000, `n${++n}`) });
  stream.subscribe("call_a").connect();
  await flush();
  const first = sock();
  first.accept();
  first.push({ type: "error", call_id: null, data: { code: "token_expired", message: "expired" } });
  first.drop(4001);
  await clock.advance(60_000);
  assert.equal(n, 1);
  assert.notEqual(sock(), first);
  assert.deepEqual(sock().protocols, ["bearer", stream.token]);
  sock().accept();
  assert.equal(stream.state, States.OPEN);
});

test("when getToken says the session is over, the state is token_expired and reconnecting stops", async () => {
  const { stream, clock, states, sock } = setup({
    getToken: async () => { throw Object.assign(new Error("401"), { status: 401 }); },
  });
  let expired = 0;
  stream.on("token_expired", () => { expired += 1; });
  stream.connect();
  await flush();
  sock().accept();
  sock().drop(4001);
  await clock.advance(60_000);
  assert.equal(stream.state, States.TOKEN_EXPIRED);
  assert.equal(expired, 1);
  assert.equal(states.at(-1), States.TOKEN_EXPIRED);
  const count = FakeWebSocket.all.length;
  await clock.advance(600_000);
  assert.equal(FakeWebSocket.all.length, count);
});

test("a network error while refreshing is retried, not taken for expiry", async () => {
  let calls = 0;
  const exp = Math.floor(new FakeClock().t / 1000) + 120;
  const { stream, clock, sock } = setup({
    token: jwt(exp),
    getToken: async () => { calls += 1; if (calls === 1) throw new TypeError("Failed to fetch"); return jwt(exp + 900); },
  });
  stream.connect();
  await flush();
  sock().accept();
  sock().take();
  await clock.advance(90_000);
  assert.equal(stream.state, States.OPEN);
  await clock.advance(5_000);
  assert.equal(calls, 2);
  assert.equal(sock().take()[0].type, "auth");
  assert.ok(isAuthError({ status: 401 }) && !isAuthError(new TypeError("x")));
});

test("close() stops for good", async () => {
  const { stream, clock, sock } = setup();
  stream.connect();
  await flush();
  sock().accept();
  stream.close();
  assert.equal(stream.state, States.CLOSED);
  assert.equal(sock().closedWith, 1000);
  await clock.advance(600_000);
  assert.equal(FakeWebSocket.all.length, 1);
});

test("keepalive: a socket silent for two ping intervals is replaced", async () => {
  const { stream, clock, sock } = setup({ pingIntervalMs: 10_000 });
  stream.connect();
  await flush();
  const first = sock();
  first.accept();
  await clock.advance(10_000);
  assert.deepEqual(first.take(), [{ type: "ping" }]);
  first.push({ type: "pong" });
  await clock.advance(30_000); // silence
  assert.equal(first.closedWith, 4000);
  assert.equal(stream.state, States.RECONNECTING);
  await clock.advance(60_000);
  assert.notEqual(sock(), first);
});

test("control() sends the request and settles with its ack or its refusal", async () => {
  const { stream, clock, sock } = setup();
  const errors = [];
  stream.on("error", (m) => errors.push(m));
  await assert.rejects(stream.control("c1", "say", { text: "hi" }), { code: "closed" });
  stream.connect();
  await flush();
  sock().accept();
  sock().take();
  const acked = stream.control("c1", "say", { text: "hi", interrupt: true });
  const [sent] = sock().take();
  assert.deepEqual(sent, { type: "control", call_id: "c1", action: "say", args: { text: "hi", interrupt: true }, ref: sent.ref });
  sock().push({ type: "control_ack", ref: sent.ref, call_id: "c1", data: { request_id: "ctl_1", seq: 7 } });
  assert.deepEqual(await acked, { request_id: "ctl_1", seq: 7 });

  const refused = assert.rejects(stream.control("c1", "end"), { code: "no_producer" });
  const [second] = sock().take();
  sock().push({ type: "error", ref: second.ref, call_id: "c1", data: { code: "no_producer", message: "nobody", call_id: "c1" } });
  await refused;
  assert.equal(errors.length, 0); // the promise carried it

  const unanswered = assert.rejects(stream.control("c1", "pause"), { code: "timeout" });
  await clock.advance(10_000);
  await unanswered;
  const dropped = assert.rejects(stream.control("c1", "resume"), { code: "closed" });
  sock().drop();
  await dropped;
});

// ---- Server-Sent Events: the fallback when the WebSocket cannot open ---------------------------

class FakeFetch {
  constructor() { this.calls = []; }
  fetch = (url, init = {}) => {
    if (String(url).endsWith("/healthz")) return Promise.resolve(new Response("{}", { status: 200 }));
    let controller;
    const body = new ReadableStream({ start(c) { controller = c; } });
    const call = {
      url: new URL(url), headers: init.headers, signal: init.signal,
      push: (text) => controller.enqueue(new TextEncoder().encode(text)),
      end: () => controller.close(),
    };
    init.signal.addEventListener("abort", () => { try { controller.error(new Error("aborted")); } catch { /* closed */ } });
    this.calls.push(call);
    return Promise.resolve(new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } }));
  };
  last() { return this.calls.at(-1); }
}

const sseMessage = (msg, id) => `${id == null ? "" : `id: ${id}\n`}event: ${msg.type}\ndata: ${JSON.stringify(msg)}\n\n`;

test("falls back to SSE when the WebSocket never opens, with the same events and resume", async () => {
  const fake = new FakeFetch();
  const { stream, clock, received, sock } = setup({ fetch: fake.fetch });
  const transports = [];
  stream.on("transport", ({ transport }) => transports.push(transport));
  stream.subscribe("c1").subscribe("c2", { since: 4 });
  stream.connect();
  await flush();
  sock().drop(1006); // the proxy strips Upgrade, while plain HTTP gets through
  await flush();
  await flush();
  assert.deepEqual(transports, ["sse"]);
  const first = fake.last();
  assert.equal(first.url.pathname, "/v1/events/stream");
  assert.deepEqual(first.url.searchParams.getAll("call_id"), ["c1", "c2"]);
  assert.match(first.headers.Authorization, /^Bearer /);
  assert.equal(first.url.searchParams.get("token"), null); // never in the URL
  assert.equal(first.headers["Last-Event-ID"], "c2=4");
  await flush();
  assert.equal(stream.state, States.OPEN);
  first.push(": keepalive\n\n" + sseMessage(subscribed("c1", 0), "c1=0,c2=4"));
  first.push(sseMessage(ev("c2", 5), "c1=0,c2=5") + sseMessage(subscribed("c2", 5, "live", 1), "c1=0,c2=5"));
  first.push(sseMessage(ev("c1", 1), "c1=1,c2=5"));
  await flush();
  assert.deepEqual(received, ["c2#5", "c1#1"]);
  first.end(); // the server restarts
  await flush();
  assert.equal(stream.state, States.RECONNECTING);
  await clock.advance(1000);
  const second = fake.last();
  assert.notEqual(second, first);
  assert.equal(second.headers["Last-Event-ID"], "c1=1,c2=5");
  second.push(sseMessage(ev("c1", 1), "c1=1,c2=5") + sseMessage(ev("c1", 2), "c1=2,c2=5"));
  await flush();
  assert.deepEqual(received, ["c2#5", "c1#1", "c1#2"]); // the overlap is dropped
  stream.close();
});

test("over SSE a change of subscriptions reopens the stream at once, quietly, and control is refused", async () => {
  const fake = new FakeFetch();
  const { stream, states } = setup({ fetch: fake.fetch, transport: "sse" });
  stream.subscribe("c1", { types: ["transcript.final"] });
  stream.connect();
  await flush();
  await flush();
  const first = fake.last();
  assert.equal(first.url.searchParams.get("types"), "transcript.final");
  first.push(sseMessage(ev("c1", 3), "c1=3"));
  await flush();
  stream.subscribe("c2");
  await flush();
  await flush();
  const second = fake.last();
  assert.ok(first.signal.aborted);
  assert.deepEqual(second.url.searchParams.getAll("call_id"), ["c1", "c2"]);
  assert.equal(second.url.searchParams.get("types"), null); // c2 wants every type
  assert.equal(second.headers["Last-Event-ID"], "c1=3");
  assert.equal(states.filter((s) => s === States.RECONNECTING).length, 0);
  await assert.rejects(stream.control("c1", "say", { text: "hi" }), (e) => e.code === "unsupported");
  stream.close();
});

test("a stream that ends with unauthorized is a 4001: no blind reconnect", async () => {
  const fake = new FakeFetch();
  const { stream } = setup({ fetch: fake.fetch, transport: "sse" });
  const expired = [];
  stream.on("token_expired", () => expired.push(true));
  stream.subscribe("c1");
  stream.connect();
  await flush();
  await flush();
  fake.last().push(sseMessage({ type: "error", call_id: null, data: { code: "unauthorized", message: "revoked" } }));
  fake.last().end();
  await flush();
  await flush();
  assert.deepEqual(expired, [true]);
  assert.equal(stream.state, States.TOKEN_EXPIRED);
});

test("a server that is down keeps the WebSocket: no fallback when plain HTTP fails too", async () => {
  const { stream, sock } = setup({ fetch: () => Promise.reject(new TypeError("connection refused")) });
  const transports = [];
  stream.on("transport", ({ transport }) => transports.push(transport));
  stream.subscribe("c1");
  stream.connect();
  await flush();
  sock().drop(1006);
  await flush();
  await flush();
  assert.deepEqual(transports, []);
  assert.equal(stream._sse, false);
  assert.equal(stream.state, States.RECONNECTING);
  stream.close();
});

// A binary audio frame as the server relays it: version | track | id length | id | ms | payload.
function audioFrame(callId, track, ms, bytes, version = 1) {
  const id = Buffer.from(callId, "ascii");
  const buf = new ArrayBuffer(8 + id.length + bytes.length);
  const view = new DataView(buf);
  view.setUint8(0, version);
  view.setUint8(1, track);
  view.setUint16(2, id.length);
  new Uint8Array(buf, 4, id.length).set(id);
  view.setUint32(4 + id.length, ms);
  new Uint8Array(buf, 8 + id.length).set(bytes);
  return buf;
}

test("listen() asks for a call's audio, hands its binary frames on as audio events, and asks again after a reconnect", async () => {
  const { stream, clock, sock } = setup();
  const heard = [];
  stream.on("audio", (f) => heard.push([f.call_id, f.track, f.ms, [...f.payload]]));
  stream.connect();
  await flush();
  sock().accept();
  sock().take();
  stream.listen("call_a");
  assert.deepEqual(sock().take(), [{ type: "listen", call_id: "call_a" }]);
  sock().onmessage({ data: audioFrame("call_a", 1, 40, [1, 2, 3, 4]) });
  sock().onmessage({ data: audioFrame("call_b", 0, 0, [9, 9]) }); // not listened to
  sock().onmessage({ data: audioFrame("call_a", 0, 0, [5, 6], 2) }); // an unknown version
  sock().onmessage({ data: new ArrayBuffer(3) }); // truncated
  assert.deepEqual(heard, [["call_a", 1, 40, [1, 2, 3, 4]]]);

  sock().drop();
  await clock.advance(60_000);
  sock().accept();
  assert.ok(sock().take().some((m) => m.type === "listen" && m.call_id === "call_a"), "listened again");
  stream.unlisten("call_a");
  assert.deepEqual(sock().take(), [{ type: "unlisten", call_id: "call_a" }]);
  sock().onmessage({ data: audioFrame("call_a", 1, 60, [7]) });
  assert.equal(heard.length, 1, "no audio after unlisten");
});

test("a call's end ends its listen: it is not asked for again after a reconnect", async () => {
  const { stream, clock, sock } = setup();
  stream.listen("call_a").connect();
  await flush();
  sock().accept();
  assert.deepEqual(sock().take(), [{ type: "listen", call_id: "call_a" }]);
  sock().push({ type: "unlistened", call_id: "call_a", data: { call_id: "call_a", reason: "ended" } });
  sock().drop();
  await clock.advance(60_000);
  sock().accept();
  assert.deepEqual(sock().take().filter((m) => m.type === "listen"), []);
});
