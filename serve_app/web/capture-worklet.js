// Microphone → PCM16 at 24 kHz, in chunks of ~40 ms posted to the page (which base64s them into
// `input_audio_buffer.append`). Resampling runs here, on the audio thread, from the context's own rate.
import { Resampler } from "./resampler.js";

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate = 24000, chunkMs = 40 } = options.processorOptions ?? {};
    // `sampleRate` is the AudioContext's rate, a global of the worklet scope.
    this.resampler = new Resampler(sampleRate, targetRate);
    this.chunkSamples = Math.round((targetRate * chunkMs) / 1000);
    this.chunk = new Int16Array(this.chunkSamples);
    this.filled = 0;
    this.alive = true;
    this.port.onmessage = (event) => {
      if (event.data === "stop") this.alive = false;
    };
  }

  process(inputs) {
    // The node is mono (channelCount 1, explicit): the graph downmixes a stereo microphone for us.
    const channel = inputs[0]?.[0];
    if (channel) {
      const out = this.resampler.out;
      for (let i = 0; i < channel.length; i++) {
        const n = this.resampler.push(channel[i]);
        for (let k = 0; k < n; k++) {
          const s = Math.max(-1, Math.min(1, out[k]));
          this.chunk[this.filled++] = s < 0 ? s * 0x8000 : s * 0x7fff;
          if (this.filled === this.chunkSamples) {
            // Transferred, not copied: a fresh chunk each time (25 a second).
            this.port.postMessage(this.chunk.buffer, [this.chunk.buffer]);
            this.chunk = new Int16Array(this.chunkSamples);
            this.filled = 0;
          }
        }
      }
    }
    return this.alive;
  }
}

registerProcessor("capture-processor", CaptureProcessor);
