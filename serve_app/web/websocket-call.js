// A conversation over the WebSocket (`v1/realtime`): microphone → capture worklet → base64 PCM16 24 kHz
// `input_audio_buffer.append`; Moshi's `response.output_audio.delta` → playback worklet → speakers. Web Audio
// output is not what Chrome's echo canceller references (chromium bug 687574): in this mode, headphones.
import { parseEvent, sessionUpdate, showEvent } from "./events.js";
import { reportError, setState, stats, warn } from "./ui.js";

const RATE = 24000; // Moshi's rate, both ways
const CHUNK_MS = 40;
const MAX_UNSENT_BYTES = 256 * 1024; // ~4 s of base64 audio stuck in the socket: drop rather than lag

const CLOSE_MEANINGS = {
  1000: "normal closure",
  1001: "the server is going away",
  1006: "the connection dropped without a close frame (server unreachable or gone, or a proxy cut it)",
  1008: "policy violation (API key, unknown model, or a session limit)",
  1011: "server error",
  1013: "try again later (the server is full or fell behind)",
};

/** Why this browser cannot use this mode, or null. */
export function unsupported() {
  return typeof AudioWorkletNode === "undefined"
    ? "This browser has no AudioWorklet support, which the WebSocket mode needs to capture and play audio; " +
        "use a current Chrome, Edge, Firefox or Safari."
    : null;
}

/** Runs inside the click itself: Safari keeps a context suspended when it is created only after an await. */
export function prepare(c) {
  // The context's own rate (Firefox refuses another rate than the microphone's); the worklets convert.
  c.ctx = new AudioContext();
  c.resumed = c.ctx.resume().catch(() => {}); // judged by the context's state once the microphone is open
}

/** Starts the call `c` (microphone open in `c.stream`); failures are shown and end it through `c.end()`. */
export async function open(c, { model, key }) {
  try {
    await openAudio(c);
  } catch (e) {
    reportError(`Could not start audio: ${e.message}`);
    return c.end();
  }
  if (c.closing) return c.end();
  connect(c, model, key);
}

export function close(c) {
  c.ready = false;
  if (c.ws && c.ws.readyState <= WebSocket.OPEN) c.ws.close(1000, "user stopped");
  c.capture?.port.postMessage("stop");
  c.playback?.port.postMessage({ type: "stop" });
  c.ctx?.close().catch(() => {});
  Object.assign(c, { ws: null, capture: null, playback: null, ctx: null });
}

async function openAudio(c) {
  stats.contextRate = c.ctx.sampleRate;
  await c.resumed;
  if (c.ctx.state !== "running") {
    warn(`The browser keeps audio ${c.ctx.state}: nothing will be heard or captured. Press Stop, then Talk again.`);
  }
  await Promise.all([
    c.ctx.audioWorklet.addModule(new URL("capture-worklet.js", import.meta.url)),
    c.ctx.audioWorklet.addModule(new URL("playback-worklet.js", import.meta.url)),
  ]);
  const source = c.ctx.createMediaStreamSource(c.stream);
  c.capture = new AudioWorkletNode(c.ctx, "capture-processor", {
    numberOfInputs: 1,
    numberOfOutputs: 1,
    channelCount: 1,
    channelCountMode: "explicit",
    processorOptions: { targetRate: RATE, chunkMs: CHUNK_MS },
  });
  // Through a silent gain to the destination: a node the destination does not pull may not be processed.
  const mute = new GainNode(c.ctx, { gain: 0 });
  source.connect(c.capture).connect(mute).connect(c.ctx.destination);
  c.capture.port.onmessage = (event) => sendAudio(c, new Uint8Array(event.data));

  c.playback = new AudioWorkletNode(c.ctx, "playback-processor", {
    numberOfInputs: 0,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    processorOptions: { sourceRate: RATE, startMs: 100, maxTargetMs: 600, growMs: 40, dropAboveMs: 400 },
  });
  c.playback.connect(c.ctx.destination);
  c.playback.port.onmessage = (event) => {
    const { samplesPlayed, underruns, samplesDropped, bufferedMs, targetMs } = event.data;
    Object.assign(stats, { samplesPlayed, underruns, samplesDropped, bufferedMs, targetMs });
  };
}

function connect(c, model, key) {
  const url = new URL(`v1/realtime?model=${encodeURIComponent(model)}`, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  // Browsers cannot set headers on a WebSocket: the key travels as a subprotocol, the way OpenAI's
  // browser clients send it. `realtime` is the protocol the server selects.
  const protocols = ["realtime"];
  if (key) protocols.push(`openai-insecure-api-key.${key}`);
  try {
    c.ws = new WebSocket(url, protocols);
  } catch (e) {
    reportError(`Could not open the WebSocket (${e.message}); an API key may only hold token characters.`);
    return c.end();
  }
  setState("connecting");
  c.ws.onmessage = (message) => {
    const event = parseEvent(message.data);
    if (event) onEvent(c, event);
  };
  c.ws.onclose = (event) => {
    if (!c.closing) {
      const meaning = CLOSE_MEANINGS[event.code] ?? "unexpected";
      const reason = event.reason ? ` (${event.reason})` : "";
      reportError(`The server closed the connection: code ${event.code}, ${meaning}${reason}.`);
    }
    c.end();
  };
}

function sendAudio(c, bytes) {
  if (!c.ready || c.ws?.readyState !== WebSocket.OPEN) return;
  if (c.ws.bufferedAmount > MAX_UNSENT_BYTES) {
    stats.chunksNotSent++;
    return;
  }
  c.ws.send(JSON.stringify({ type: "input_audio_buffer.append", audio: toBase64(bytes) }));
  stats.samplesSent += bytes.length / 2;
}

function onEvent(c, event) {
  switch (event.type) {
    case "session.created":
      c.ws.send(JSON.stringify(sessionUpdate({ type: "audio/pcm", rate: RATE })));
      c.ready = true;
      break;
    case "response.output_audio.delta":
    case "response.audio.delta": {
      const samples = pcm16ToFloat(event.delta);
      c.playback?.port.postMessage({ type: "audio", samples }, [samples.buffer]);
      stats.audioDeltas++;
      return; // audio counters render on the page's 250 ms timer
    }
    case "response.output_audio.done":
    case "response.audio.done":
    case "response.done":
      c.playback?.port.postMessage({ type: "end" }); // the utterance is over: draining is no underrun
      break;
    default:
      break;
  }
  showEvent(event);
}

// ---- base64 PCM16 ----

function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function pcm16ToFloat(b64) {
  const bin = atob(b64);
  const out = new Float32Array(bin.length >> 1);
  for (let i = 0; i < out.length; i++) {
    const v = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8); // little-endian
    out[i] = ((v << 16) >> 16) / 32768;
  }
  return out;
}
