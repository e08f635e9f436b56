// The listen-in player's AudioWorklet (listen.js loads it when the Listen button is pressed).
// One jitter buffer per track (0 caller, 1 agent), each a ring of samples at the call's rate:
// playing starts once TARGET_S is buffered, the oldest audio is dropped when more than MAX_S is
// waiting (a listener that fell behind hears what is said now), an underrun plays silence until
// TARGET_S is buffered again. Both tracks are resampled (linear) to the context's rate and
// mixed into both output channels; a muted track is not heard and its meter stays at zero.
//
// Port in:  {type: "audio", track, rate, samples: Float32Array}, {type: "mute", track, muted}
// Port out: {type: "stats", levels, samples, buffered_ms, underruns, dropped}, ten times a second

const TARGET_S = 0.08; // the delay the buffer builds before it plays
const MAX_S = 0.4; // past this much waiting, drop the oldest back to TARGET_S
const RING_S = 2; // a ring holds this much: more than MAX_S plus the largest frame (1.2 s of 8 kHz mu-law)
const STATS_S = 0.1;

class Track {
  constructor() {
    this.rate = 0;
    this.ring = null;
    this.w = 0; // samples written, ever
    this.r = 0; // the read position (fractional), in the same count
    this.playing = false;
    this.muted = false;
    this.level = 0;
    this.samples = 0;
    this.underruns = 0;
    this.dropped = 0;
  }

  push(samples, rate) {
    if (rate !== this.rate) { // a new format: start over at its rate
      this.rate = rate;
      this.ring = new Float32Array(Math.ceil(rate * RING_S));
      this.w = 0;
      this.r = 0;
      this.playing = false;
    }
    const n = this.ring.length;
    for (let i = 0; i < samples.length; i += 1) this.ring[(this.w + i) % n] = samples[i];
    this.w += samples.length;
    this.samples += samples.length;
    if (this.w - this.r > MAX_S * rate) {
      const to = this.w - TARGET_S * rate;
      this.dropped += Math.floor(to - this.r);
      this.r = to;
    }
  }

  /** Add this track's next `out.length` samples at `outRate` into `out`; returns their RMS. */
  mix(out, outRate) {
    if (!this.ring) return 0;
    if (!this.playing) {
      if (this.w - this.r < TARGET_S * this.rate) return 0;
      this.playing = true;
    }
    const step = this.rate / outRate;
    const n = this.ring.length;
    let sum = 0;
    let i = 0;
    for (; i < out.length; i += 1) {
      const at = Math.floor(this.r);
      if (at + 1 >= this.w) break; // underrun: silence until the buffer fills again
      const frac = this.r - at;
      const a = this.ring[at % n];
      const v = a + (this.ring[(at + 1) % n] - a) * frac;
      this.r += step;
      if (this.muted) continue;
      out[i] += v;
      sum += v * v;
    }
    if (i < out.length) {
      this.playing = false;
      this.underruns += 1;
    }
    return Math.sqrt(sum / out.length);
  }
}

class ListenProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.tracks = [new Track(), new Track()];
    this.blocks = 0;
    this.port.onmessage = (ev) => {
      const m = ev.data;
      const t = this.tracks[m.track];
      if (!t) return;
      if (m.type === "audio") t.push(m.samples, m.rate);
      else if (m.type === "mute") t.muted = !!m.muted;
    };
  }

  process(_inputs, outputs) {
    const out = outputs[0];
    const left = out[0];
    for (const t of this.tracks) {
      const rms = t.mix(left, sampleRate);
      t.level = Math.max(rms, t.level * 0.85); // falls back smoothly between words
      if (t.level < 1e-4) t.level = 0; // …to a still meter
    }
    for (let c = 1; c < out.length; c += 1) out[c].set(left);
    this.blocks += 1;
    if (this.blocks * left.length >= STATS_S * sampleRate) {
      this.blocks = 0;
      const ts = this.tracks;
      this.port.postMessage({
        type: "stats",
        levels: ts.map((t) => t.level),
        samples: ts.map((t) => t.samples),
        buffered_ms: ts.map((t) => (t.rate ? Math.round(((t.w - t.r) * 1000) / t.rate) : 0)),
        underruns: ts.map((t) => t.underruns),
        dropped: ts.map((t) => t.dropped),
      });
    }
    return true;
  }
}

registerProcessor("callstream-listen", ListenProcessor);
