// Moshi's 24 kHz audio → the context's rate, gap-free, through a small adaptive jitter buffer.
//
// The idea is Moshi's own web client's: a buffer inside the worklet that starts playing once a target is
// buffered, grows the target on each underrun, drops audio when far too much piled up (latency matters
// more than completeness in a conversation), and posts its counters back to the page.
//
// Moshi only sends audio inside a response (one utterance): the page says "end" when a response's audio is
// complete, so draining the buffer then is the utterance ending, not an underrun.
import { Resampler } from "./resampler.js";

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions ?? {};
    this.rate = o.sourceRate ?? 24000;
    const ms = (v) => Math.round((v * this.rate) / 1000);
    this.ms = ms;
    this.minTarget = ms(o.startMs ?? 100); // Moshi sends 80 ms per delta: play once two have arrived
    this.target = this.minTarget;
    this.maxTarget = ms(o.maxTargetMs ?? 600);
    this.growBy = ms(o.growMs ?? 40);
    this.dropAbove = ms(o.dropAboveMs ?? 400); // beyond target + this, drop down to the target
    this.ring = new Float32Array(this.rate * 10); // far more than any target: overflow only drops
    this.read = 0;
    this.size = 0;
    this.playing = false;
    this.ending = false;
    this.alive = true;
    this.resampler = new Resampler(this.rate, sampleRate);
    this.pending = 0; // outputs of the resampler not yet copied out
    this.pendingAt = 0;
    this.stats = { samplesPlayed: 0, underruns: 0, samplesDropped: 0 };
    this.calmFrames = 0; // output frames since the last underrun: shrink the target after a long calm
    this.reportEvery = Math.round(sampleRate / 10);
    this.sinceReport = 0;
    this.port.onmessage = ({ data }) => {
      if (data.type === "audio") this.enqueue(data.samples);
      else if (data.type === "end") this.ending = true;
      else if (data.type === "clear") this.clear();
      else if (data.type === "stop") this.alive = false;
    };
  }

  enqueue(samples) {
    this.ending = false;
    const cap = this.ring.length;
    for (let i = 0; i < samples.length; i++) {
      if (this.size === cap) this.skip(1);
      this.ring[(this.read + this.size) % cap] = samples[i];
      this.size++;
    }
    if (this.size > this.target + this.dropAbove) this.skip(this.size - this.target);
  }

  skip(n) {
    this.read = (this.read + n) % this.ring.length;
    this.size -= n;
    this.stats.samplesDropped += n;
  }

  clear() {
    this.stats.samplesDropped += this.size;
    this.size = 0;
    this.playing = false;
    this.ending = false;
  }

  nextSample() {
    if (!this.playing) {
      if (this.size === 0 || (this.size < this.target && !this.ending)) return 0;
      this.playing = true;
    }
    if (this.size === 0) {
      this.playing = false;
      if (this.ending) {
        this.ending = false;
      } else {
        this.stats.underruns++;
        this.target = Math.min(this.target + this.growBy, this.maxTarget);
        this.calmFrames = 0;
      }
      return 0;
    }
    const x = this.ring[this.read];
    this.read = (this.read + 1) % this.ring.length;
    this.size--;
    this.stats.samplesPlayed++;
    return x;
  }

  process(_inputs, outputs) {
    const channels = outputs[0];
    const first = channels[0];
    const out = this.resampler.out;
    for (let i = 0; i < first.length; i++) {
      while (this.pending === 0) {
        this.pending = this.resampler.push(this.nextSample());
        this.pendingAt = 0;
      }
      first[i] = out[this.pendingAt++];
      this.pending--;
    }
    for (let c = 1; c < channels.length; c++) channels[c].set(first);
    this.calmFrames += first.length;
    if (this.calmFrames > 10 * sampleRate && this.target > this.minTarget) {
      this.target = Math.max(this.minTarget, this.target - this.ms(20));
      this.calmFrames = 0;
    }
    this.sinceReport += first.length;
    if (this.sinceReport >= this.reportEvery) {
      this.sinceReport = 0;
      this.port.postMessage({
        ...this.stats,
        bufferedMs: (1000 * this.size) / this.rate,
        targetMs: (1000 * this.target) / this.rate,
        playing: this.playing,
      });
    }
    return this.alive;
  }
}

registerProcessor("playback-processor", PlaybackProcessor);
