// The demo page: microphone → `input_audio_buffer.append` (PCM16 24 kHz), Moshi's audio deltas → speakers,
// both sides' transcripts on screen. It speaks the GA dialect (the server picks GA when the handshake offers
// no `openai-beta.realtime-v1` subprotocol): one set of event names, and the shape the server documents.

const RATE = 24000; // Moshi's rate, both ways
const CHUNK_MS = 40;
const MAX_UNSENT_BYTES = 256 * 1024; // ~4 s of base64 audio stuck in the socket: drop rather than lag

const $ = (id) => document.getElementById(id);

/** Counters for people (shown below) and for tests (`window.demoStats`). */
const stats = {
  state: "idle",
  samplesSent: 0,
  samplesPlayed: 0,
  underruns: 0,
  audioDeltas: 0,
  transcriptChars: 0,
  userTranscriptChars: 0,
  samplesDropped: 0,
  chunksNotSent: 0,
  bufferedMs: 0,
  targetMs: 0,
  contextRate: null,
  echoCancellation: null,
  errors: [],
  warnings: [],
  randomWeights: [], // models the server says are random-weight checkpoints (`random_weights` in v1/models)
};
window.demoStats = stats;

let call = null; // the conversation in progress, or null

const CLOSE_MEANINGS = {
  1000: "normal closure",
  1001: "the server is going away",
  1006: "the connection dropped without a close frame (server unreachable or gone, or a proxy cut it)",
  1008: "policy violation (API key, unknown model, or a session limit)",
  1011: "server error",
  1013: "try again later (the server is full or fell behind)",
};

function setState(state) {
  stats.state = state;
  const pill = $("state");
  pill.textContent = state;
  pill.className = `pill ${state === "live" ? "live" : ""}`;
  const busy = state !== "idle";
  $("talk").textContent = busy ? "Stop" : "Talk";
  $("talk").classList.toggle("live", busy);
  renderStats();
}

function reportError(message) {
  stats.errors.push(message);
  const li = document.createElement("li");
  li.textContent = message;
  $("errors").append(li);
  renderStats();
}

function warn(message) {
  stats.warnings.push(message);
  const p = document.createElement("p");
  p.textContent = message;
  $("warnings").append(p);
}

function setVad(text, speaking) {
  const pill = $("vad");
  pill.textContent = text;
  pill.className = `pill ${speaking ? "speaking" : ""}`;
}

const SHOWN = [
  "state", "samplesSent", "samplesPlayed", "underruns", "audioDeltas", "transcriptChars",
  "userTranscriptChars", "samplesDropped", "chunksNotSent", "bufferedMs", "targetMs", "contextRate",
  "echoCancellation",
];

function renderStats() {
  const dl = $("stats");
  dl.replaceChildren(
    ...SHOWN.flatMap((key) => {
      const dt = document.createElement("dt");
      dt.textContent = key;
      const dd = document.createElement("dd");
      const value = stats[key];
      dd.textContent = typeof value === "number" && !Number.isInteger(value) ? value.toFixed(0) : String(value);
      return [dt, dd];
    }),
  );
}

// ---- transcripts: one line per user turn (by item id) and per Moshi response (by response id) ----

const lines = new Map();

function line(key, who) {
  let entry = lines.get(key);
  if (!entry) {
    const p = document.createElement("p");
    p.className = who === "You" ? "user" : "moshi";
    const name = document.createElement("span");
    name.className = "who";
    name.textContent = `${who}:`;
    const text = document.createElement("span");
    text.className = "text";
    p.append(name, text);
    $("log").append(p);
    entry = { p, text, chars: 0 };
    lines.set(key, entry);
  }
  return entry;
}

function scrollLog() {
  const log = $("log");
  log.scrollTop = log.scrollHeight;
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

// ---- models ----

async function loadModels() {
  try {
    const response = await fetch(new URL("v1/models", location.href));
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const body = await response.json();
    const select = $("model");
    select.replaceChildren(
      ...body.data.map((m) => {
        const option = document.createElement("option");
        option.value = option.textContent = m.id;
        return option;
      }),
    );
    if (!body.data.length) reportError("The server lists no models.");
    showRandomWeights(body.data.filter((m) => m.random_weights).map((m) => m.id));
  } catch (e) {
    reportError(`Could not list the models (GET v1/models): ${e.message}`);
  }
}

/** The embedded default's checkpoints are tiny and untrained: without this, their syllables look like a bug. */
function showRandomWeights(ids) {
  stats.randomWeights = ids;
  const notice = $("notice");
  notice.hidden = ids.length === 0;
  notice.textContent = ids.length
    ? `${ids.join(", ")}: tiny checkpoints with random weights (the server's embedded default). Moshi answers ` +
      "with noise and random syllables, and its transcript is random text: that is expected. A server " +
      "configured with the real weights (kyutai/moshiko-pytorch-bf16) answers in words."
    : "";
}

// ---- one conversation ----

function describeMicError(e) {
  if (e.name === "NotAllowedError" || e.name === "SecurityError") {
    return "Microphone permission was denied. Allow the microphone for this page (the icon in the address bar) and press Talk again.";
  }
  if (e.name === "NotFoundError" || e.name === "OverconstrainedError") return "No usable microphone was found.";
  if (e.name === "NotReadableError") return "The microphone could not be opened (another application may be using it).";
  return `Could not open the microphone: ${e.name}: ${e.message}`;
}

function sessionUpdate() {
  // interrupt_response off: Moshi is full duplex and yields by itself; cancelling its answer whenever the
  // user makes a sound would mute it mid-sentence (the server's VAD still reports speech and commits turns).
  return {
    type: "session.update",
    session: {
      type: "realtime",
      output_modalities: ["audio"],
      audio: {
        input: {
          format: { type: "audio/pcm", rate: RATE },
          turn_detection: { type: "server_vad", interrupt_response: false },
          transcription: { model: "pocketsphinx" },
        },
        output: { format: { type: "audio/pcm", rate: RATE } },
      },
    },
  };
}

async function start() {
  stats.errors.length = 0;
  $("errors").replaceChildren();
  const model = $("model").value;
  if (!model) return reportError("No model to talk to (the model list is empty or failed to load).");
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    return reportError(
      "The microphone needs a secure context: open this page over https, or as http://localhost or " +
        "http://127.0.0.1 (a plain http:// address of another host gets no getUserMedia).",
    );
  }
  if (typeof AudioWorkletNode === "undefined") {
    return reportError(
      "This browser has no AudioWorklet support, which the page needs to capture and play audio; use a " +
        "current Chrome, Edge, Firefox or Safari.",
    );
  }
  const c = { closing: false, ready: false };
  call = c;
  setState("starting");
  // Created and resumed inside the click itself: Safari keeps a context suspended when that happens only
  // after an await. Its own rate (Firefox refuses another rate than the microphone's); the worklets
  // convert to and from 24 kHz.
  c.ctx = new AudioContext();
  c.resumed = c.ctx.resume().catch(() => {}); // judged by the context's state once the microphone is open
  try {
    c.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
  } catch (e) {
    reportError(describeMicError(e));
    return stop(c);
  }
  if (c.closing) return stop(c);
  const settings = c.stream.getAudioTracks()[0]?.getSettings() ?? {};
  stats.echoCancellation = settings.echoCancellation ?? "unknown";
  if (settings.echoCancellation !== true) {
    warn(
      `This browser did not turn on echo cancellation (echoCancellation: ${stats.echoCancellation}). ` +
        "Full duplex needs it: Moshi listens while it speaks, so through loudspeakers it hears itself " +
        "and answers its own voice. Use headphones.",
    );
  }
  try {
    await openAudio(c);
  } catch (e) {
    reportError(`Could not start audio: ${e.message}`);
    return stop(c);
  }
  if (c.closing) return stop(c);
  connect(c, model, $("api-key").value.trim());
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
    return stop(c);
  }
  setState("connecting");
  c.ws.onmessage = (event) => {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return reportError("The server sent something that is not JSON.");
    }
    onEvent(c, data);
  };
  c.ws.onclose = (event) => {
    if (!c.closing) {
      const meaning = CLOSE_MEANINGS[event.code] ?? "unexpected";
      const reason = event.reason ? ` (${event.reason})` : "";
      reportError(`The server closed the connection: code ${event.code}, ${meaning}${reason}.`);
    }
    stop(c);
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
      c.ws.send(JSON.stringify(sessionUpdate()));
      c.ready = true;
      setState("connected");
      break;
    case "session.updated":
      setState("live");
      setVad("silent", false);
      break;
    case "input_audio_buffer.speech_started":
      setVad("speaking", true);
      line(event.item_id, "You").p.classList.add("pending");
      scrollLog();
      break;
    case "input_audio_buffer.speech_stopped":
      setVad("silent", false);
      break;
    case "conversation.item.input_audio_transcription.delta": {
      const entry = line(event.item_id, "You");
      entry.text.textContent += event.delta;
      entry.chars += event.delta.length;
      stats.userTranscriptChars += event.delta.length;
      scrollLog();
      break;
    }
    case "conversation.item.input_audio_transcription.completed": {
      const entry = line(event.item_id, "You");
      entry.text.textContent = event.transcript || "(nothing recognised)";
      stats.userTranscriptChars += event.transcript.length - entry.chars;
      entry.chars = event.transcript.length;
      entry.p.classList.remove("pending");
      scrollLog();
      break;
    }
    case "conversation.item.input_audio_transcription.failed": {
      const entry = line(event.item_id, "You");
      entry.p.classList.remove("pending");
      entry.text.textContent = "(not transcribed)";
      reportError(`Transcription failed: ${event.error?.message ?? "no reason given"}`);
      break;
    }
    case "response.output_audio_transcript.delta":
    case "response.audio_transcript.delta": {
      const entry = line(event.response_id, "Moshi");
      entry.text.textContent += event.delta;
      stats.transcriptChars += event.delta.length;
      scrollLog();
      break;
    }
    case "response.output_audio.delta":
    case "response.audio.delta": {
      const samples = pcm16ToFloat(event.delta);
      c.playback?.port.postMessage({ type: "audio", samples }, [samples.buffer]);
      stats.audioDeltas++;
      break;
    }
    case "response.output_audio.done":
    case "response.audio.done":
    case "response.done":
      c.playback?.port.postMessage({ type: "end" }); // the utterance is over: draining is no underrun
      break;
    case "error": {
      const e = event.error ?? {};
      reportError(`Server error ${e.code ?? e.type ?? ""}: ${e.message ?? JSON.stringify(e)}`);
      break;
    }
    default:
      break;
  }
  if (!event.type.endsWith("audio.delta")) renderStats(); // audio counters render on the 250 ms timer
}

/** Ends `c` (by default the current call); safe to repeat, and for a call that a newer one replaced. */
function stop(c = call) {
  if (!c) return;
  c.closing = true;
  c.ready = false;
  if (c.ws && c.ws.readyState <= WebSocket.OPEN) c.ws.close(1000, "user stopped");
  c.capture?.port.postMessage("stop");
  c.playback?.port.postMessage({ type: "stop" });
  c.stream?.getTracks().forEach((track) => track.stop());
  c.ctx?.close().catch(() => {});
  Object.assign(c, { ws: null, capture: null, playback: null, stream: null, ctx: null });
  if (call === c) {
    call = null;
    setVad("—", false);
    endPendingLines();
    setState("idle");
  }
}

/** A turn the user had started when the call stopped will not be transcribed: drop its empty line. */
function endPendingLines() {
  for (const [key, entry] of lines) {
    if (!entry.p.classList.contains("pending")) continue;
    entry.p.classList.remove("pending");
    if (!entry.text.textContent) {
      entry.p.remove();
      lines.delete(key);
    }
  }
}

$("controls").addEventListener("submit", (event) => {
  event.preventDefault();
  if (call) stop();
  else start();
});
setInterval(renderStats, 250);
renderStats();
loadModels();
