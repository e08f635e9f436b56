// Hear a call from the listen-in panel (docs/audio.md): the Listen button, both tracks played
// live through Web Audio (listen-worklet.js holds a jitter buffer per track), a level meter and
// a mute per track, and the recording player of an ended call. Only a session whose token
// carries the `listen` scope may press it. Nothing here runs until Listen is pressed: no audio
// context, no worklet, no listeners on the socket; stopping closes them all.
//
// For tests and the curious, `window.callstreamListen` reads (never writes) the player's
// figures: {call_id, frames: [caller, agent] received, samples: [caller, agent] taken by the
// worklet, levels, buffered_ms, underruns, dropped}, refreshed ten times a second while listening.

const TRACKS = ["caller", "agent"];
const RECORDING_TRIES = 12; // the file is closed a moment after call.ended: look again, 1 s apart
const WORKER_URL = new URL("recording-sw.js", import.meta.url);
const WORKER_WAIT_MS = 4000; // a worker not in control by then: the recording comes as a Blob

let mulawTable = null;
/** G.711 µ-law byte → sample in [-1, 1). */
function mulaw() {
  if (mulawTable) return mulawTable;
  mulawTable = new Float32Array(256);
  for (let i = 0; i < 256; i += 1) {
    const u = ~i & 0xff;
    const t = (((u & 0x0f) << 3) + 0x84) << ((u & 0x70) >> 4);
    mulawTable[i] = ((u & 0x80) ? 0x84 - t : t - 0x84) / 32768;
  }
  return mulawTable;
}

/** A frame's payload in the call's codec → float samples. */
export function decode(payload, codec) {
  if (codec === "mulaw") {
    const table = mulaw();
    const out = new Float32Array(payload.length);
    for (let i = 0; i < payload.length; i += 1) out[i] = table[payload[i]];
    return out;
  }
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const out = new Float32Array(payload.byteLength >> 1);
  for (let i = 0; i < out.length; i += 1) out[i] = view.getInt16(i * 2, true) / 32768;
  return out;
}

const REFUSED = {
  forbidden: "The server refused: this session may not listen to this call.",
  too_many_subscriptions: "The server refused: this connection already listens to four calls.",
};

/** `promise`, or undefined once `ms` have passed. */
function within(promise, ms) {
  return Promise.race([promise, new Promise((done) => setTimeout(done, ms))]);
}

let worker = null;
/** Whether recording-sw.js controls this page (registered on the first recording shown). */
function recordingWorker() {
  worker ??= (async () => {
    const container = navigator.serviceWorker;
    if (!container) return false; // not a secure context (plain http from another host)
    try {
      await container.register(WORKER_URL);
      if (!container.controller) {
        const claimed = new Promise((done) => container.addEventListener("controllerchange", done, { once: true }));
        const ready = await within(container.ready, WORKER_WAIT_MS);
        ready?.active?.postMessage({ type: "callstream.claim" }); // a page loaded with a hard reload
        await within(claimed, WORKER_WAIT_MS);
      }
    } catch {
      return false; // service workers turned off, storage refused
    }
    return container.controller?.scriptURL === WORKER_URL.href;
  })();
  return worker;
}

/**
 * Wire the audio bar. `stream`: the page's CallStream; `canListen()`: whether the session's
 * token has `listen`; `fetchAuthed(path, headers)`: a GET with the session's credential (a
 * Response); `token(fresh)`: the session's token, refreshed first with `fresh` (null if none),
 * handed to recording-sw.js for the recording player's requests.
 */
export function setupListen({ stream, bar, canListen, fetchAuthed, token }) {
  const $ = (sel) => bar.querySelector(sel);
  const button = $("#listen-btn");
  const tracksEl = $("#audio-tracks");
  const status = $("#audio-status");
  const player = $("#recording");
  const meters = TRACKS.map((t) => $(`#meter-${t}`));
  const mutes = TRACKS.map((_, i) => $(`.mute[data-track="${i}"]`));
  let shownKey = null;
  let live = null; // {callId, fmt, ctx, node, off: [unsubscribe…], frames, muted}
  let recording = { callId: null, url: null, gen: 0 };
  let figures = null;
  Object.defineProperty(window, "callstreamListen", { get: () => figures, configurable: true });
  navigator.serviceWorker?.addEventListener("message", async (ev) => {
    if (ev.data?.type !== "callstream.token" || !ev.ports[0] || ev.source?.scriptURL !== WORKER_URL.href) return;
    let t = null;
    try {
      t = await token(!!ev.data.fresh);
    } catch { /* an expired session: the request goes without, and fails */ }
    ev.ports[0].postMessage({ token: t });
  });
  navigator.serviceWorker?.startMessages();

  function say(text, kind = "info") {
    status.textContent = text;
    status.dataset.kind = kind;
  }

  async function start(callId) {
    if (stream._sse) {
      // Server-Sent Events carry text only: no audio can come over them.
      say("Listening needs the WebSocket; this page fell back to Server-Sent Events (a proxy without WebSocket?).", "error");
      return;
    }
    const muted = [false, false];
    const state = { callId, fmt: null, ctx: null, node: null, off: [], frames: [0, 0], muted, pending: [] };
    live = state;
    button.textContent = "Stop";
    button.setAttribute("aria-pressed", "true");
    tracksEl.hidden = false;
    for (let i = 0; i < 2; i += 1) showMute(i, false);
    say("Waiting for the call's audio…");
    const mine = (msg) => (msg.call_id ?? msg.data?.call_id) === callId;
    state.off.push(
      stream.on("listening", (msg) => {
        if (!mine(msg)) return;
        state.fmt = msg.data;
        say(`Listening · ${msg.data.codec === "mulaw" ? "µ-law" : "PCM"} ${msg.data.sample_rate / 1000} kHz`);
      }),
      stream.on("audio", (f) => {
        if (f.call_id !== callId || !state.fmt || f.track > 1) return;
        state.frames[f.track] += 1;
        const samples = decode(f.payload, state.fmt.codec);
        const m = { type: "audio", track: f.track, rate: state.fmt.sample_rate, samples };
        if (state.node) state.node.port.postMessage(m, [samples.buffer]);
        else if (state.pending.length < 50) state.pending.push(m);
      }),
      stream.on("unlistened", (msg) => {
        if (mine(msg) && msg.data?.reason === "ended") stop("The call ended.");
      }),
      stream.on("error", (msg) => {
        const d = msg.data || {};
        if (!mine(msg) || !/listen/.test(d.message || "")) return;
        stop(REFUSED[d.code] || `The server refused: ${d.message}`, "error");
      }),
    );
    stream.listen(callId);
    try {
      // Created on the button's press (a user gesture), so the browser lets it play.
      const ctx = new AudioContext({ latencyHint: "interactive" });
      state.ctx = ctx;
      await ctx.audioWorklet.addModule(new URL("listen-worklet.js", import.meta.url));
      if (live !== state) return;
      const node = new AudioWorkletNode(ctx, "callstream-listen", { numberOfInputs: 0, outputChannelCount: [2] });
      node.port.onmessage = (ev) => { if (live === state) showStats(state, ev.data); };
      node.connect(ctx.destination);
      state.node = node;
      for (let i = 0; i < 2; i += 1) if (muted[i]) node.port.postMessage({ type: "mute", track: i, muted: true });
      for (const m of state.pending) node.port.postMessage(m, [m.samples.buffer]);
      state.pending = [];
      if (ctx.state === "suspended") await ctx.resume();
    } catch (err) {
      if (live === state) stop(`This browser cannot play the audio: ${err.message || err}`, "error");
    }
  }

  function stop(text = "", kind = "info") {
    const state = live;
    if (!state) return;
    live = null;
    for (const off of state.off) off();
    stream.unlisten(state.callId);
    state.node?.disconnect();
    state.ctx?.close().catch(() => {});
    figures = null;
    button.textContent = "Listen";
    button.setAttribute("aria-pressed", "false");
    tracksEl.hidden = true;
    for (const m of meters) m.value = 0;
    say(text, kind);
  }

  function showStats(state, s) {
    figures = Object.freeze({
      call_id: state.callId, frames: [...state.frames], samples: s.samples, levels: s.levels,
      buffered_ms: s.buffered_ms, underruns: s.underruns, dropped: s.dropped,
    });
    for (let i = 0; i < 2; i += 1) meters[i].value = Math.min(1, s.levels[i] * 3);
  }

  function showMute(i, on) {
    mutes[i].setAttribute("aria-pressed", String(on));
    mutes[i].textContent = on ? "Unmute" : "Mute";
  }

  button.addEventListener("click", () => {
    if (button.disabled) return;
    if (live) stop();
    else if (shownKey) start(shownKey.split("\n")[0]);
  });
  for (const [i, btn] of mutes.entries()) {
    btn.addEventListener("click", () => {
      if (!live) return;
      live.muted[i] = !live.muted[i];
      showMute(i, live.muted[i]);
      live.node?.port.postMessage({ type: "mute", track: i, muted: live.muted[i] });
    });
  }

  function dropRecording() {
    if (recording.url) URL.revokeObjectURL(recording.url);
    recording = { callId: null, url: null, gen: recording.gen + 1 };
    player.removeAttribute("src");
    player.load(); // ends a stream still open for the previous call
    player.hidden = true;
  }

  player.addEventListener("error", () => {
    if (recording.callId && player.getAttribute("src")) say("Could not play the recording.", "error");
  });

  /** An ended call's WAV. Streamed where the page has its Service Worker (recording-sw.js):
   * the player gets the plain URL, plays as soon as the start arrives and seeks with range
   * requests, and the worker adds the session's credential to each. Elsewhere (no Service
   * Worker: a page over plain http from another host than localhost) the whole file is fetched
   * with the credential into a Blob URL. Never a token in a URL. 404 while the node closes the
   * file: look again, then "No recording". */
  async function loadRecording(callId) {
    dropRecording();
    const gen = recording.gen;
    recording.callId = callId;
    say("Looking for the recording…");
    const path = `/v1/calls/${encodeURIComponent(callId)}/recording`;
    const streamed = await recordingWorker();
    if (gen !== recording.gen) return;
    for (let tries = 0; tries < RECORDING_TRIES; tries += 1) {
      let r;
      try {
        // Streamed, only the WAV's 44-byte header is asked for: is the file there yet?
        r = await fetchAuthed(path, streamed ? { Range: "bytes=0-43" } : {});
      } catch {
        r = null;
      }
      if (gen !== recording.gen) return r?.body?.cancel().catch(() => {});
      if (r && r.ok) {
        if (streamed) {
          r.body?.cancel().catch(() => {});
          recording.url = null;
        } else {
          let blob;
          try {
            blob = await r.blob();
          } catch {
            if (gen === recording.gen) say("Could not load the recording (the connection dropped).", "error");
            return;
          }
          if (gen !== recording.gen) return;
          recording.url = URL.createObjectURL(blob);
        }
        player.src = recording.url ?? path;
        player.hidden = false;
        say("Recording");
        return;
      }
      if (r && r.status !== 404) return say(`Could not load the recording (${r.status}).`, "error");
      await new Promise((done) => setTimeout(done, 1000));
      if (gen !== recording.gen) return;
    }
    say("No recording of this call.");
  }

  /** Bring the bar up to date with the call on screen (cheap when nothing changed). */
  function render(c) {
    const allowed = canListen();
    const ended = !!c && c.status === "ended";
    const key = c ? `${c.id}\n${ended}\n${allowed}` : null;
    if (key === shownKey) return;
    const previous = shownKey;
    shownKey = key;
    if (live && (!c || live.callId !== c.id)) stop();
    if (!c) return dropRecording();
    bar.hidden = false;
    button.hidden = ended;
    button.disabled = !allowed;
    button.title = allowed ? "Hear the call live" : "This session may not listen (callstream login --listen)";
    if (!ended) {
      dropRecording();
      if (!live) say(allowed ? "" : "This session may not listen: open a link from `callstream login --listen`.");
      return;
    }
    if (live) stop();
    if (!allowed) {
      dropRecording();
      return say("This session may not play recordings: open a link from `callstream login --listen`.");
    }
    if (recording.callId !== c.id || !previous) loadRecording(c.id);
  }

  return { render, stop };
}
