// callstream.js — a small, dependency-free browser client for callstream's
// events socket (`GET /v1/events`). Copy it or import it as an ES module.
//
//   import { CallStream } from "/callstream.js";
//   const stream = new CallStream({ token, getToken: fetchFreshJwt });
//   stream.on("transcript.final", (msg) => console.log(msg.call_id, msg.data.text));
//   stream.on("state", ({ state }) => console.log("socket is", state));
//   stream.subscribe("call_xyz789", { since: 0 });   // history held by the server, then live
//   stream.subscribe("*", { types: ["call.ended"] }); // every call of the account
//   stream.connect();
//
// What it does for you, and why:
// - The JWT travels as the WebSocket subprotocol pair ["bearer", token], so it
//   never appears in a URL (and so never in an access log or browser history).
// - Reconnects with capped exponential backoff and jitter, so a restarted
//   server is not hit by every dashboard in the same millisecond.
// - Remembers the last `seq` of every call and resubscribes with `since`, so an
//   explicitly subscribed call is gapless across reconnects (the server only
//   ever drops superseded partials). Duplicates are dropped by `seq`.
// - `*` cannot take `since`: on reconnect it resubscribes `*`, and for every
//   live call it had seen it briefly subscribes that call with `since` to catch
//   up, then unsubscribes it again. Calls that started and ended entirely while
//   disconnected are not known to the client: listen to "reconnected" and
//   list calls over REST (then `catchUp(id, 0)` the new ones) if that matters.
// - `history_unavailable` (the server no longer holds what `since` asked for)
//   is emitted as an event, so the app can fetch the call over REST
//   (`fetchHistory` follows the pages); the subscription continues live.
// - Refreshes the JWT before it expires with the user's `getToken()` and sends
//   it as `{"type":"auth"}` on the open socket; no reconnect needed.
// - Falls back to Server-Sent Events (`GET /v1/events/stream`) when the
//   WebSocket cannot open while the server answers HTTP (a proxy that strips
//   `Upgrade`), or from the start with `transport: "sse"`. Same API, same events, same resume: the stream is
//   read with fetch (the token in the Authorization header, never in the URL)
//   and reopened at once, resuming from the seqs already received
//   (`Last-Event-ID`), whenever the subscriptions change. One stream carries
//   one type filter (the union of the subscriptions'); control() needs the
//   WebSocket.
//
// Events (`on(type, fn)` → returns an unsubscribe function; `fn(detail)`):
//   every server message type ("transcript.final", "subscribed", "error", …),
//   "event"                call events (anything with a seq), after de-duplication
//   "message"              every server message, raw
//   "state"                {state, previous}: connecting | open | reconnecting | token_expired | closed
//   "open", "reconnected"  {attempt}
//   "history_unavailable"  {call_id, since, message}
//   "token_refreshed"      {expiresAt}       "token_error" {error}
//   "transport"            {transport: "sse"} when it falls back from the WebSocket
//   "audio"                {call_id, track, ms, payload: Uint8Array} a binary frame of a
//                          listened call (listen(callId); "listening" gives its format)
// It is also an EventTarget: addEventListener(type, (e) => e.detail).

export const States = Object.freeze({
  CONNECTING: "connecting",
  OPEN: "open",
  RECONNECTING: "reconnecting",
  TOKEN_EXPIRED: "token_expired",
  CLOSED: "closed",
});

const SEEN_WINDOW = 2048; // seqs remembered per call to drop duplicates

/** Decode a JWT's `exp` claim (seconds) without verifying it; null if absent. */
export function tokenExpiry(token) {
  try {
    const part = String(token).split(".")[1];
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    return typeof json.exp === "number" ? json.exp : null;
  } catch {
    return null;
  }
}

/**
 * Whether a getToken() failure means the session is over (HTTP 401/403 or an
 * error marked expired), as opposed to a network error worth retrying.
 */
export function isAuthError(error) {
  return !!error && (error.expired === true || error.status === 401 || error.status === 403);
}

/** The default events URL: same host as the page, ws: or wss: to match. */
export function defaultUrl(loc = globalThis.location) {
  const scheme = loc && loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc ? loc.host : "localhost"}/v1/events`;
}

/** The REST base of an events URL: ws://h/v1/events → http://h (wss: → https:). */
export function restBase(url) {
  return String(url).replace(/^ws(s?):/, "http$1:").replace(/\/v1\/events(\?.*)?$/, "");
}

/** Delay before reconnect attempt `attempt` (0-based): capped exponential, "equal jitter". */
export function backoffDelay(attempt, { initialMs = 500, maxMs = 30000, factor = 2 } = {}, random = Math.random) {
  const cap = Math.min(maxMs, initialMs * factor ** attempt);
  return Math.round(cap / 2 + random() * (cap / 2));
}

/**
 * A WebSocket-shaped reader of `GET /v1/events/stream` (Server-Sent Events over fetch), so the
 * connection life cycle below serves both transports: readyState, onopen, onmessage(ev.data),
 * onclose({code}). It sends nothing: a stream's subscriptions are in its URL. A stream that the
 * server ends with `unauthorized` or `token_expired` closes with 4001, as the socket would.
 * `url` null: nothing to stream yet (no subscriptions); it opens and stays idle.
 */
export class SseSocket {
  constructor(url, { token, lastEventId, fetch } = {}) {
    this.url = url;
    this.readyState = 0;
    this.onopen = this.onmessage = this.onclose = this.onerror = this.onactivity = null;
    this._abort = new AbortController();
    this._endCode = null;
    this._run(token, lastEventId, fetch || ((...a) => globalThis.fetch(...a)));
  }

  send() {}

  close(code = 1000, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this._abort.abort();
    if (this.onclose) this.onclose({ code, reason });
  }

  async _run(token, lastEventId, fetchFn) {
    if (!this.url) {
      queueMicrotask(() => this._opened());
      return;
    }
    const headers = { Accept: "text/event-stream", Authorization: `Bearer ${token}` };
    if (lastEventId) headers["Last-Event-ID"] = lastEventId;
    let code = 1006;
    let reason = "";
    try {
      const r = await fetchFn(this.url, { headers, signal: this._abort.signal, cache: "no-store" });
      if (!r.ok || !r.body) {
        code = r.status === 401 ? 4001 : 1006;
        reason = `HTTP ${r.status}`;
      } else {
        this._opened();
        await this._read(r.body.getReader());
      }
    } catch (err) {
      reason = String(err);
    }
    if (this.readyState === 3) return;
    this.readyState = 3;
    if (this.onclose) this.onclose({ code: this._endCode ?? code, reason });
  }

  _opened() {
    if (this.readyState !== 0) return;
    this.readyState = 1;
    if (this.onopen) this.onopen();
  }

  async _read(reader) {
    const decoder = new TextDecoder();
    let buffered = "";
    let event = "message";
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done || this.readyState === 3) return;
      if (this.onactivity) this.onactivity();
      buffered += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl).replace(/\r$/, "");
        buffered = buffered.slice(nl + 1);
        if (line === "") {
          if (data.length) this._dispatch(event, data.join("\n"));
          event = "message";
          data = [];
        } else if (line[0] !== ":") {
          const colon = line.indexOf(":");
          const name = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val[0] === " ") val = val.slice(1);
          if (name === "event") event = val;
          else if (name === "data") data.push(val);
        }
      }
    }
  }

  _dispatch(event, data) {
    if (event === "error") {
      try {
        const code = JSON.parse(data).data.code;
        if (code === "unauthorized" || code === "token_expired") this._endCode = 4001;
      } catch {
        // not JSON: handed on as is
      }
    }
    if (this.readyState === 1 && this.onmessage) this.onmessage({ data });
  }
}

export class CallStream extends EventTarget {
  /**
   * @param {object} opts
   * @param {string} [opts.url]          events URL; default: this page's host + /v1/events
   * @param {string} [opts.token]        a JWT (scope subscribe)
   * @param {() => Promise<string>} [opts.getToken]  returns a fresh JWT; used to refresh before expiry
   * @param {number} [opts.refreshMarginS=60]  refresh this long before `exp` (at most a quarter of the lifetime)
   * @param {object} [opts.backoff]      {initialMs, maxMs, factor}
   * @param {number} [opts.pingIntervalMs=25000]  keepalive; a socket silent for two intervals is reconnected
   * @param {Function} [opts.WebSocket]  WebSocket class (tests inject a fake)
   * @param {Function} [opts.fetch]      fetch function for `fetchHistory` and the SSE stream (default: the global fetch)
   * @param {"auto"|"websocket"|"sse"} [opts.transport="auto"]  auto: the WebSocket, or SSE when it cannot open
   */
  constructor(opts = {}) {
    super();
    this.url = opts.url || defaultUrl();
    this.token = opts.token || null;
    this.getToken = opts.getToken || null;
    this.refreshMarginS = opts.refreshMarginS ?? 60;
    this.backoff = { initialMs: 500, maxMs: 30000, factor: 2, ...(opts.backoff || {}) };
    this.pingIntervalMs = opts.pingIntervalMs ?? 25000;
    this._WS = opts.WebSocket || globalThis.WebSocket;
    this._fetch = opts.fetch || ((...args) => globalThis.fetch(...args));
    this._timers = opts.timers || globalThis; // {setTimeout, clearTimeout}
    this._random = opts.random || Math.random;
    this._now = opts.now || Date.now;

    this.state = States.CLOSED;
    this.ws = null;
    this.attempt = 0;
    this.wasOpen = false;
    this.subscriptions = new Map(); // call_id | "*" → {types, pendingSince}
    this.calls = new Map(); // call_id → {lastSeq, seen:Set, floor, ended}
    this._catchUps = new Map(); // call_id → since, temporary subscriptions
    this.listens = new Set(); // calls whose audio is wanted (listen), asked again on reconnect
    this._reconnectTimer = null;
    this._refreshTimer = null;
    this._pingTimer = null;
    this._lastRx = 0;
    this._authFailures = 0;
    this._failedOpens = 0;
    this._forceRefresh = false;
    this._gen = 0;
    this._stopped = true;
    this._controls = new Map(); // ref → {resolve, reject, timer}: control requests awaiting their ack
    this._controlRefs = 0;
    this.transport = opts.transport || "auto";
    this._sse = this.transport === "sse"; // reading Server-Sent Events instead of the socket
    this._liveOnly = new Set(); // calls to resume live, not from a seq (history_unavailable)
    this._restreaming = false;
    this._probing = false;
  }

  // ---- public API -------------------------------------------------------

  /** Listen to one event type; returns a function that removes the listener. */
  on(type, fn) {
    const h = (e) => fn(e.detail);
    this.addEventListener(type, h);
    return () => this.removeEventListener(type, h);
  }

  /** Open the socket (idempotent). Reconnects by itself until close(). */
  connect() {
    if (!this._stopped) return this;
    this._stopped = false;
    this.attempt = 0;
    this._open();
    return this;
  }

  /** Close for good: no reconnect, timers cleared. */
  close() {
    this._stopped = true;
    this._clearTimers();
    const ws = this.ws;
    this.ws = null;
    if (ws) this._detach(ws).close(1000, "client closed");
    this._failControls();
    this._setState(States.CLOSED);
  }

  /**
   * Subscribe to a call (or "*"). `since`: replay what the server holds after
   * that seq (0 = everything), then go live. `types`: only these event types.
   * Subscribing again replaces the earlier subscription, as on the server.
   */
  subscribe(callId, { since, types } = {}) {
    if (callId === "*" && since != null) throw new Error('"*" does not take since');
    // pendingSince: the replay asked for and not yet confirmed by "subscribed";
    // kept so that a subscribe made before the socket opens still replays.
    const sub = { types: types && types.length ? [...types] : null, pendingSince: since ?? null };
    this.subscriptions.set(callId, sub);
    this._catchUps.delete(callId);
    const c = this.calls.get(callId);
    // An explicit replay from `since` wants those events even if their seqs
    // fell out of the de-duplication window.
    if (c && since != null && since < c.floor) c.floor = since;
    if (this._isOpen()) {
      if (this._sse) this._restreamSoon();
      else this._sendSubscribe(callId, sub, since ?? this._resumeSince(callId));
    }
    return this;
  }

  /** Stop receiving a call (or "*"). */
  unsubscribe(callId) {
    this.subscriptions.delete(callId);
    this._catchUps.delete(callId);
    if (this._isOpen()) {
      if (this._sse) this._restreamSoon();
      else this._send({ type: "unsubscribe", call_id: callId });
    }
    return this;
  }

  /**
   * Hear a call's audio (scope `listen`, WebSocket only): `listening` {codec, sample_rate}, then
   * "audio" events; asked again after a reconnect. `unlistened` ends it (reason "ended" when the
   * call ends); an `error` naming the call says why it was refused.
   */
  listen(callId) {
    this.listens.add(callId);
    if (this._isOpen() && !this._sse) this._send({ type: "listen", call_id: callId });
    return this;
  }

  /** Stop hearing a call's audio. */
  unlisten(callId) {
    if (!this.listens.delete(callId)) return this;
    if (this._isOpen() && !this._sse) this._send({ type: "unlisten", call_id: callId });
    return this;
  }

  /**
   * Fetch what the server holds of a call after `since` without staying
   * subscribed (unless it is explicitly subscribed): subscribe with since,
   * unsubscribe once `subscribed` arrives. Types follow the "*" subscription.
   */
  catchUp(callId, since = 0) {
    if (this.subscriptions.has(callId)) return this;
    this._catchUps.set(callId, since);
    if (this._isOpen()) this._sendCatchUp(callId, since);
    return this;
  }

  /** The last seq received for a call (0 if none). */
  lastSeq(callId) {
    const c = this.calls.get(callId);
    return c ? c.lastSeq : 0;
  }

  /** Forget a call's seq bookkeeping (e.g. when the app drops an old call). */
  forget(callId) {
    this.calls.delete(callId);
  }

  /**
   * Feed a server-shaped message from elsewhere (e.g. events fetched over REST
   * after history_unavailable) through the same de-duplication and dispatch.
   */
  ingest(msg) {
    this._handle(msg);
  }

  /**
   * Fetch a call's stored events after `since` over REST (`GET /v1/calls/{id}/events`) and feed
   * them through `ingest`, page by page: each answer names the `next_since` to ask from, null on
   * the last page, so a long call never comes (or sits) in memory whole. Resolves to the number
   * of events fetched. `get(path)` returns the parsed JSON of a GET (pass your own to add a
   * token refresh or a proxy); the default fetches from the events URL's host with this token.
   */
  async fetchHistory(callId, since = 0, { get } = {}) {
    const read = get || ((path) => this._getJson(path));
    let after = since;
    let fetched = 0;
    for (;;) {
      const body = await read(`/v1/calls/${encodeURIComponent(callId)}/events?since=${after}`);
      const events = Array.isArray(body) ? body : (body && body.events) || [];
      for (const msg of events) this.ingest({ ...msg, call_id: msg.call_id ?? callId });
      fetched += events.length;
      const next = body && body.next_since;
      if (!events.length || typeof next !== "number" || next <= after) return fetched;
      after = next;
    }
  }

  /**
   * Ask the producer of a live call to act (needs a token with the control scope):
   * `control(callId, "say", {text, interrupt})`, `"instruct"` `{text}`, `"pause"`, `"resume"`,
   * `"transfer"` `{to, reason}`, `"end"` `{reason}`. Resolves with the ack `{request_id, seq}`;
   * rejects with an Error whose `code` is the server's (`forbidden`, `call_not_live`,
   * `no_producer`, `unsupported_action`, `invalid_message`, `rate_limited`) or `closed` /
   * `timeout`. The request and its one result arrive as the call's `control.requested` and
   * `control.result` events, like any other.
   */
  control(callId, action, args = {}, { timeoutMs = 10000 } = {}) {
    if (!this._isOpen()) return Promise.reject(controlError("closed", "not connected"));
    if (this._sse) return Promise.reject(controlError("unsupported", "control needs the WebSocket; this page reads events over SSE"));
    const ref = `control-${++this._controlRefs}`;
    return new Promise((resolve, reject) => {
      const timer = this._timers.setTimeout(() => {
        this._controls.delete(ref);
        reject(controlError("timeout", "the server did not answer the control request in time"));
      }, timeoutMs);
      this._controls.set(ref, { resolve, reject, timer });
      this._send({ type: "control", call_id: callId, action, args, ref });
    });
  }

  /** A control_ack or an error answering a control request; true when it was one. */
  _settleControl(msg) {
    const waiting = msg.ref != null && this._controls.get(msg.ref);
    if (!waiting || (msg.type !== "control_ack" && msg.type !== "error")) return false;
    this._controls.delete(msg.ref);
    this._timers.clearTimeout(waiting.timer);
    const data = msg.data || {};
    if (msg.type === "control_ack") waiting.resolve({ request_id: data.request_id, seq: data.seq });
    else waiting.reject(controlError(data.code || "internal", data.message || ""));
    return true;
  }

  _failControls() {
    for (const [ref, waiting] of this._controls) {
      this._timers.clearTimeout(waiting.timer);
      waiting.reject(controlError("closed", "the connection dropped before the server answered"));
      this._controls.delete(ref);
    }
  }

  /** Replace the token now (e.g. after a login) and send it on the open socket. */
  setToken(token) {
    this.token = token;
    if (this._isOpen()) this._send({ type: "auth", token });
    this._scheduleRefresh();
  }

  async _getJson(path) {
    const r = await this._fetch(restBase(this.url) + path, { headers: { Authorization: `Bearer ${this.token}` } });
    if (!r.ok) throw Object.assign(new Error(`${path}: HTTP ${r.status}`), { status: r.status });
    return r.json();
  }

  // ---- connection lifecycle ---------------------------------------------

  async _open() {
    const gen = ++this._gen;
    if (!this._restreaming) this._setState(this.wasOpen || this.attempt > 0 ? States.RECONNECTING : States.CONNECTING);
    if (!(await this._ensureFreshToken())) return;
    if (this._stopped || gen !== this._gen) return;
    let ws;
    try {
      ws = this._sse ? this._openStream() : new this._WS(this.url, ["bearer", this.token]);
    } catch (err) {
      this._emit("error", { code: "connect_failed", message: String(err) });
      this._probeFallback();
      this._scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onactivity = () => {
      this._lastRx = this._now();
    };
    ws.onopen = () => this._onOpen(ws);
    if ("binaryType" in ws) ws.binaryType = "arraybuffer"; // audio frames (listen)
    ws.onmessage = (ev) => this._onMessage(ws, ev);
    ws.onclose = (ev) => this._onClose(ws, ev);
    ws.onerror = () => {}; // a close always follows; handled there
  }

  /** Make sure the token to connect with is not (about to be) expired; false if we must not connect now. */
  async _ensureFreshToken() {
    const exp = this.token ? tokenExpiry(this.token) : null;
    const stale = this._forceRefresh || !this.token || (exp !== null && exp * 1000 - this._now() < 5000);
    if (!stale) return true;
    if (!this.getToken) {
      this._tokenExpired();
      return false;
    }
    try {
      this.token = await this.getToken();
      this._forceRefresh = false;
      this._emit("token_refreshed", { expiresAt: tokenExpiry(this.token) });
      return true;
    } catch (error) {
      this._emit("token_error", { error });
      if (isAuthError(error)) this._tokenExpired();
      else this._scheduleReconnect(); // network trouble: try again with backoff
      return false;
    }
  }

  _onOpen(ws) {
    if (ws !== this.ws) return;
    const reconnected = this.wasOpen;
    const quiet = this._restreaming; // a new stream for new subscriptions: nothing was lost
    this._restreaming = false;
    this.wasOpen = true;
    this._failedOpens = 0;
    this._lastRx = this._now();
    this._setState(States.OPEN);
    if (!this._sse) this._resubscribeAll(); // a stream's subscriptions are in its URL
    this._scheduleRefresh();
    this._schedulePing();
    if (!quiet) this._emit(reconnected ? "reconnected" : "open", { attempt: this.attempt });
    this.attempt = 0;
  }

  /**
   * A WebSocket failed before it ever opened in this session. A server that is down fails plain
   * HTTP too: then nothing changes (the reconnect is already scheduled). One that answers HTTP
   * while its WebSocket cannot open sits behind something that strips `Upgrade`: read
   * Server-Sent Events from now on, at once.
   */
  _probeFallback() {
    if (this.transport !== "auto" || this._sse || this.wasOpen || this._probing) return;
    this._probing = true;
    const probe = Promise.resolve().then(() => this._fetch(`${restBase(this.url)}/healthz`, { cache: "no-store" }));
    probe.then(
      () => {
        this._probing = false;
        this._fallBack();
      },
      () => {
        this._probing = false;
      },
    );
  }

  _fallBack() {
    if (this._sse || this.wasOpen || this._stopped) return;
    this._sse = true;
    this._emit("transport", { transport: "sse" });
    this._clearTimer("_reconnectTimer");
    const ws = this.ws;
    this.ws = null;
    if (ws) this._detach(ws).close(1000, "reading Server-Sent Events instead");
    this._open();
  }

  /** The stream for the subscriptions as they are now, resuming each call where it got to. */
  _openStream() {
    const subs = this.subscriptions;
    if (!subs.size) return new SseSocket(null);
    const all = subs.get("*");
    const ids = all ? ["*"] : [...subs.keys()];
    const lists = [...subs.values()].map((s) => s.types);
    const types = lists.some((t) => !t) ? null : [...new Set(lists.flat())].sort();
    const cursor = new Map();
    if (all) for (const [id, c] of this.calls) if (!c.ended && !this._liveOnly.has(id)) cursor.set(id, c.lastSeq);
    for (const [id, sub] of subs) {
      if (id === "*" || this._liveOnly.has(id)) continue;
      const since = sub.pendingSince ?? this._resumeSince(id);
      if (since != null) cursor.set(id, since);
    }
    const params = new URLSearchParams();
    for (const id of ids) params.append("call_id", id);
    if (types) params.set("types", types.join(","));
    const lastEventId = [...cursor].map(([id, seq]) => `${id}=${seq}`).join(",");
    const url = `${restBase(this.url)}/v1/events/stream?${params}`;
    return new SseSocket(url, { token: this.token, lastEventId, fetch: this._fetch });
  }

  /** The subscriptions changed while streaming: open the stream that stands for them (once per tick). */
  _restreamSoon() {
    if (this._restreaming) return;
    this._restreaming = true;
    queueMicrotask(() => {
      if (this._stopped || !this._sse) return void (this._restreaming = false);
      const ws = this.ws;
      this.ws = null;
      if (ws) this._detach(ws).close(1000, "subscriptions changed");
      this._open();
    });
  }

  _onClose(ws, ev) {
    if (ws !== this.ws) return;
    this.ws = null;
    this._failControls();
    this._clearTimer("_pingTimer");
    if (this._stopped) return;
    const code = ev ? ev.code : 1006;
    if (this.state !== States.OPEN) this._failedOpens += 1;
    if (this.state !== States.OPEN && code !== 4001) this._probeFallback();
    if (code === 4001) {
      // Auth: the token expired or was revoked. Get a fresh one before retrying;
      // if even fresh tokens are refused, stop (getToken's 401 ends it sooner).
      this._authFailures += 1;
      if (!this.getToken || this._authFailures > 2) return this._tokenExpired();
      this._forceRefresh = true;
    } else if (this._failedOpens > 0 && this._failedOpens % 3 === 0 && this.getToken) {
      // A handshake refused over and over may be a 401 the browser cannot show us.
      this._forceRefresh = true;
    }
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    if (this._stopped) return;
    this._setState(States.RECONNECTING);
    const delay = backoffDelay(this.attempt, this.backoff, this._random);
    this.attempt += 1;
    this._clearTimer("_reconnectTimer");
    this._reconnectTimer = this._timers.setTimeout(() => {
      this._reconnectTimer = null;
      this._open();
    }, delay);
  }

  _tokenExpired() {
    this._clearTimers();
    this._stopped = true;
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      this._detach(ws).close(1000, "token expired");
    }
    this._setState(States.TOKEN_EXPIRED);
    this._emit("token_expired", {});
  }

  /**
   * End the connection because the session ended (the page learned it first, say from a REST
   * answer): as when the server closes with 4001, the state becomes `token_expired` and the
   * client does not reconnect. Nothing happens if it has already ended so.
   */
  expire() {
    if (this.state !== States.TOKEN_EXPIRED) this._tokenExpired();
  }

  /** Reconnect now (e.g. the browser came back online), skipping the backoff wait. */
  reconnectNow() {
    if (this._stopped || this._isOpen()) return;
    this._clearTimer("_reconnectTimer");
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      this._detach(ws).close(1000, "reconnect");
    }
    this._open();
  }

  // ---- subscriptions ----------------------------------------------------

  _resumeSince(callId) {
    const c = this.calls.get(callId);
    return c ? c.lastSeq : undefined;
  }

  _resubscribeAll() {
    // Explicit calls first (gapless: since = last seq, or the since of a replay
    // the drop interrupted), then catch-ups, then "*": the server handles one
    // socket's messages in order, so "*" is in place before any catch-up ends.
    for (const [callId, sub] of this.subscriptions) {
      if (callId === "*") continue;
      const since = sub.pendingSince ?? this._resumeSince(callId);
      this._sendSubscribe(callId, sub, since);
    }
    if (this.subscriptions.has("*")) {
      for (const [callId, c] of this.calls) {
        if (!c.ended && !this.subscriptions.has(callId) && !this._catchUps.has(callId)) {
          this._catchUps.set(callId, c.lastSeq);
        }
      }
    }
    for (const [callId, since] of this._catchUps) this._sendCatchUp(callId, since);
    const all = this.subscriptions.get("*");
    if (all) this._sendSubscribe("*", all, undefined);
    for (const callId of this.listens) this._send({ type: "listen", call_id: callId });
  }

  _sendSubscribe(callId, sub, since) {
    const msg = { type: "subscribe", call_id: callId };
    if (since != null && callId !== "*") msg.since = since;
    if (sub.types) msg.types = sub.types;
    // Keep the since of a replay in flight: if the socket drops before
    // "subscribed", the next attempt asks again from there (dups are dropped).
    sub.pendingSince = since != null && callId !== "*" ? (sub.pendingSince ?? since) : null;
    this._send(msg);
  }

  _sendCatchUp(callId, since) {
    const all = this.subscriptions.get("*");
    const msg = { type: "subscribe", call_id: callId, since };
    if (all && all.types) msg.types = all.types;
    this._send(msg);
  }

  // ---- messages ---------------------------------------------------------

  _onMessage(ws, ev) {
    if (ws !== this.ws) return;
    this._lastRx = this._now();
    if (ev.data instanceof ArrayBuffer) return this._onAudio(ev.data);
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (!msg || typeof msg !== "object") return;
    this._authFailures = 0;
    this._handle(msg);
  }

  /** A binary frame (docs/protocol.md, Live audio): u8 version | u8 track | u16 id length | id
   * | u32 ms | payload, big-endian. Dropped unless well formed and for a call listened to. */
  _onAudio(buf) {
    if (buf.byteLength < 8) return;
    const view = new DataView(buf);
    const idLen = view.getUint16(2);
    if (view.getUint8(0) !== 1 || idLen > 128 || buf.byteLength < 8 + idLen) return;
    const callId = String.fromCharCode(...new Uint8Array(buf, 4, idLen));
    if (!this.listens.has(callId)) return;
    const payload = new Uint8Array(buf, 8 + idLen);
    this._emit("audio", { call_id: callId, track: view.getUint8(1), ms: view.getUint32(4 + idLen), payload });
  }

  _handle(msg) {
    this._emit("message", msg);
    const { type, call_id: callId, data = {} } = msg;
    if (this._settleControl(msg) && type === "error") return; // the control() promise has it
    if (typeof msg.seq === "number" && callId) {
      if (!this._track(callId, msg.seq, type)) return; // duplicate
      this._emit(type, msg);
      this._emit("event", msg);
      return;
    }
    if (type === "unlistened" && data.reason === "ended") this.listens.delete(callId ?? data.call_id);
    if (type === "subscribed") this._onSubscribed(data.call_id ?? callId, data);
    else if (type === "error") return this._onError(msg);
    this._emit(type, msg);
  }

  /** Record a seq; false if it was already seen (replay overlap, or "*" plus an explicit subscription). */
  _track(callId, seq, type) {
    let c = this.calls.get(callId);
    if (!c) {
      c = { lastSeq: 0, seen: new Set(), floor: 0, ended: false };
      this.calls.set(callId, c);
    }
    if (seq <= c.floor || c.seen.has(seq)) return false;
    c.seen.add(seq);
    if (c.seen.size > SEEN_WINDOW) {
      const oldest = Math.min(...c.seen);
      c.seen.delete(oldest);
      c.floor = oldest;
    }
    if (seq > c.lastSeq) c.lastSeq = seq;
    if (type === "call.ended") c.ended = true;
    return true;
  }

  _onSubscribed(callId, data) {
    if (!callId || callId === "*") return;
    this._liveOnly.delete(callId);
    const sub = this.subscriptions.get(callId);
    if (sub) sub.pendingSince = null;
    let c = this.calls.get(callId);
    if (!c) {
      c = { lastSeq: 0, seen: new Set(), floor: 0, ended: false };
      this.calls.set(callId, c);
    }
    // After "subscribed" everything up to data.seq has been sent (or filtered
    // out by types), so a later resubscribe may start there.
    if (typeof data.seq === "number" && data.seq > c.lastSeq) c.lastSeq = data.seq;
    if (data.status === "ended") c.ended = true;
    if (this._catchUps.has(callId)) {
      this._catchUps.delete(callId);
      if (!sub) this._send({ type: "unsubscribe", call_id: callId });
    }
  }

  _onError(msg) {
    const { code, message } = msg.data || {};
    const callId = msg.call_id ?? (msg.data && msg.data.call_id);
    if (code === "history_unavailable" && callId) {
      const sub = this.subscriptions.get(callId);
      const since = sub ? sub.pendingSince : this._catchUps.get(callId);
      if (sub) {
        sub.pendingSince = null;
        if (this._sse) {
          this._liveOnly.add(callId);
          this._restreamSoon();
        } else this._sendSubscribe(callId, sub, undefined); // go on live; the app fills the gap over REST
      }
      this._catchUps.delete(callId);
      this._emit("history_unavailable", { call_id: callId, since: since ?? this.lastSeq(callId), message });
    } else if (code === "forbidden" && callId) {
      this.subscriptions.delete(callId);
      this._catchUps.delete(callId);
    } else if (code === "token_expired") {
      this.token = null; // the server closes with 4001 next; reconnect with a fresh token
    }
    this._emit("error", msg);
  }

  // ---- token refresh and keepalive --------------------------------------

  _scheduleRefresh() {
    this._clearTimer("_refreshTimer");
    const exp = this.token ? tokenExpiry(this.token) : null;
    if (!this.getToken || exp === null) return;
    const remaining = exp * 1000 - this._now();
    const margin = Math.min(this.refreshMarginS * 1000, Math.max(0, remaining) / 4);
    const delay = Math.max(1000, remaining - margin);
    this._refreshTimer = this._timers.setTimeout(() => this._refresh(), delay);
  }

  async _refresh() {
    this._refreshTimer = null;
    try {
      const token = await this.getToken();
      if (this._stopped) return;
      this.token = token;
      if (this._isOpen()) this._send({ type: "auth", token });
      this._emit("token_refreshed", { expiresAt: tokenExpiry(token) });
      this._scheduleRefresh();
    } catch (error) {
      this._emit("token_error", { error });
      if (isAuthError(error)) this._tokenExpired();
      else this._refreshTimer = this._timers.setTimeout(() => this._refresh(), 5000);
    }
  }

  _schedulePing() {
    this._clearTimer("_pingTimer");
    if (!this.pingIntervalMs) return;
    this._pingTimer = this._timers.setTimeout(() => {
      this._pingTimer = null;
      if (!this._isOpen()) return;
      if (this._now() - this._lastRx > 2 * this.pingIntervalMs) {
        // Half-open socket (laptop lid, NAT timeout): nothing arrives, not even pongs.
        const ws = this.ws;
        this._onClose(ws, { code: 1006 });
        this._detach(ws).close(4000, "keepalive timeout");
        return;
      }
      this._send({ type: "ping" });
      this._schedulePing();
    }, this.pingIntervalMs);
  }

  // ---- helpers ----------------------------------------------------------

  _isOpen() {
    return !!this.ws && this.ws.readyState === 1 && this.state === States.OPEN;
  }

  _send(obj) {
    if (this._sse) return; // a stream takes no messages: see _restreamSoon
    if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify(obj));
  }

  _detach(ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = ws.onactivity = null;
    return ws;
  }

  _setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this._emit("state", { state, previous });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _clearTimer(name) {
    if (this[name] != null) this._timers.clearTimeout(this[name]);
    this[name] = null;
  }

  _clearTimers() {
    this._clearTimer("_reconnectTimer");
    this._clearTimer("_refreshTimer");
    this._clearTimer("_pingTimer");
  }
}

function controlError(code, message) {
  return Object.assign(new Error(`${code}: ${message}`), { code });
}

/** Shorthand: `connect({token, getToken, subscribe: ["*"]})` → a connected CallStream. */
export function connect(opts = {}) {
  const stream = new CallStream(opts);
  for (const id of opts.subscribe || []) stream.subscribe(id);
  return stream.connect();
}
