// A streaming windowed-sinc resampler, shared by both worklets (the audio thread imports it).
//
// The AudioContext runs at the device's rate (48 or 44.1 kHz, sometimes other rates): Firefox refuses a
// context whose rate differs from the microphone's, so the conversion to and from Moshi's 24 kHz happens
// here rather than by forcing `new AudioContext({sampleRate: 24000})`.

const TABLE_STEPS = 256; // kernel samples per input sample: linear interpolation in between

export class Resampler {
  /**
   * @param {number} inRate samples per second pushed in
   * @param {number} outRate samples per second coming out
   * @param {number} zeroCrossings sinc lobes per side: kernel length vs. transition band
   */
  constructor(inRate, outRate, zeroCrossings = 8) {
    this.identity = inRate === outRate;
    this.step = inRate / outRate; // input samples per output sample
    // Cutoff as a fraction of the input's Nyquist rate; below 1 when downsampling (anti-aliasing), and a
    // margin so the short kernel's transition band stays below the new Nyquist rate.
    this.cutoff = Math.min(1, outRate / inRate) * 0.9;
    this.half = Math.ceil(zeroCrossings / this.cutoff); // kernel half-width, in input samples
    this.history = new Float32Array(2 * this.half);
    this.pos = 0; // next output's position after history[half - 1], in input samples
    this.out = new Float32Array(Math.ceil(1 / this.step) + 1);
    this.table = new Float32Array(this.half * TABLE_STEPS + 2);
    for (let i = 0; i < this.table.length; i++) {
      const d = i / TABLE_STEPS;
      if (d >= this.half) continue;
      const x = Math.PI * this.cutoff * d;
      const hann = 0.5 + 0.5 * Math.cos((Math.PI * d) / this.half);
      this.table[i] = this.cutoff * hann * (x === 0 ? 1 : Math.sin(x) / x);
    }
  }

  kernel(d) {
    const t = Math.abs(d) * TABLE_STEPS;
    const i = Math.floor(t);
    if (i >= this.table.length - 1) return 0;
    return this.table[i] + (t - i) * (this.table[i + 1] - this.table[i]);
  }

  /** Push one input sample; returns how many outputs it completed, readable in `this.out[0..n)`. */
  push(x) {
    if (this.identity) {
      this.out[0] = x;
      return 1;
    }
    const h = this.history;
    const origin = this.half - 1;
    h.copyWithin(0, 1);
    h[h.length - 1] = x;
    let n = 0;
    while (this.pos < 1) {
      let acc = 0;
      for (let j = 0; j < h.length; j++) acc += h[j] * this.kernel(this.pos - (j - origin));
      this.out[n++] = acc;
      this.pos += this.step;
    }
    this.pos -= 1;
    return n;
  }
}
