// What the page shows: the state and VAD pills, errors and warnings, the transcript lines, and the debug
// counters (also `window.demoStats`, which the browser test reads). Both transports write here.

export const $ = (id) => document.getElementById(id);

export const stats = {
  state: "idle",
  transport: null, // "webrtc" or "websocket", the last call's
  transcriptChars: 0,
  userTranscriptChars: 0,
  echoCancellation: null,
  // WebSocket mode: PCM16 both ways, through the AudioWorklets.
  samplesSent: 0,
  samplesPlayed: 0,
  underruns: 0,
  audioDeltas: 0,
  samplesDropped: 0,
  chunksNotSent: 0,
  bufferedMs: 0,
  targetMs: 0,
  contextRate: null,
  // WebRTC mode: Opus on the tracks, read from the peer connection's getStats() (per call).
  packetsSent: 0,
  samplesReceived: 0, // Moshi's samples the browser decoded for playout
  concealedSamples: 0,
  audioEnergy: 0, // sum of level² × seconds of Moshi's audio as played (0 for silence)
  audioSeconds: 0,
  jitterBufferMs: 0,
  audioBufferStarts: 0, // `output_audio_buffer.started`: the server began sending Moshi's audio
  errors: [],
  warnings: [],
  randomWeights: [], // models the server says are random-weight checkpoints (`random_weights` in v1/models)
};
window.demoStats = stats;

const SHOWN = {
  common: ["state", "transport", "transcriptChars", "userTranscriptChars", "echoCancellation"],
  websocket: [
    "samplesSent", "samplesPlayed", "underruns", "audioDeltas", "samplesDropped", "chunksNotSent",
    "bufferedMs", "targetMs", "contextRate",
  ],
  webrtc: [
    "packetsSent", "samplesReceived", "concealedSamples", "audioEnergy", "audioSeconds", "jitterBufferMs",
    "audioBufferStarts",
  ],
};

export function renderStats() {
  const keys = [...SHOWN.common, ...(SHOWN[stats.transport] ?? [])];
  $("stats").replaceChildren(
    ...keys.flatMap((key) => {
      const dt = document.createElement("dt");
      dt.textContent = key;
      const dd = document.createElement("dd");
      const value = stats[key];
      dd.textContent = typeof value === "number" && !Number.isInteger(value) ? formatFraction(value) : String(value);
      return [dt, dd];
    }),
  );
}

/** Milliseconds read best whole; the energy and seconds of WebRTC audio need their fraction. */
function formatFraction(value) {
  return Math.abs(value) >= 100 ? value.toFixed(0) : value.toPrecision(3);
}

export function setState(state) {
  stats.state = state;
  const pill = $("state");
  pill.textContent = state;
  pill.className = `pill ${state === "live" ? "live" : ""}`;
  const busy = state !== "idle";
  $("talk").textContent = busy ? "Stop" : "Talk";
  $("talk").classList.toggle("live", busy);
  $("transport").disabled = busy; // a call keeps the transport it started with
  renderStats();
}

export function clearErrors() {
  stats.errors.length = 0;
  $("errors").replaceChildren();
}

export function reportError(message) {
  stats.errors.push(message);
  const li = document.createElement("li");
  li.textContent = message;
  $("errors").append(li);
  renderStats();
}

export function warn(message) {
  stats.warnings.push(message);
  const p = document.createElement("p");
  p.textContent = message;
  $("warnings").append(p);
}

export function setVad(text, speaking) {
  const pill = $("vad");
  pill.textContent = text;
  pill.className = `pill ${speaking ? "speaking" : ""}`;
}

// ---- transcripts: one line per user turn (by item id) and per Moshi response (by response id) ----

const lines = new Map();

export function transcriptLine(key, who) {
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

export function scrollLog() {
  const log = $("log");
  log.scrollTop = log.scrollHeight;
}

/** A turn the user had started when the call stopped will not be transcribed: drop its empty line. */
export function endPendingLines() {
  for (const [key, entry] of lines) {
    if (!entry.p.classList.contains("pending")) continue;
    entry.p.classList.remove("pending");
    if (!entry.text.textContent) {
      entry.p.remove();
      lines.delete(key);
    }
  }
}

/** The embedded default's checkpoints are tiny and untrained: without this, their syllables look like a bug. */
export function showRandomWeights(ids) {
  stats.randomWeights = ids;
  const notice = $("notice");
  notice.hidden = ids.length === 0;
  notice.textContent = ids.length
    ? `${ids.join(", ")}: tiny checkpoints with random weights (the server's embedded default). Moshi answers ` +
      "with noise and random syllables, and its transcript is random text: that is expected. A server " +
      "configured with the real weights (kyutai/moshiko-pytorch-bf16) answers in words."
    : "";
}
