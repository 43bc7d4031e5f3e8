// A conversation over WebRTC, the way OpenAI serves browsers: mint a short-lived `ek_` key
// (`v1/realtime/client_secrets`, with the API key typed in, if the server wants one: the call itself never
// carries it), offer a peer connection with the microphone track and an `oai-events` data channel to
// `v1/realtime/calls`, and play Moshi's track through an <audio> element. Played by the peer connection,
// Moshi's voice is what the browser's echo canceller subtracts from the microphone: no headphones needed.
import { parseEvent, sessionUpdate, showEvent } from "./events.js";
import { $, reportError, setState, stats, warn } from "./ui.js";

// The offer carries the browser's candidates (one POST, no trickle); host candidates take milliseconds.
const GATHER_MS = 2000;
const STATS_MS = 250;

/** Why this browser cannot use this mode, or null. */
export function unsupported() {
  return typeof RTCPeerConnection === "undefined"
    ? "This browser has no WebRTC (RTCPeerConnection); choose the WebSocket mode."
    : null;
}

export function prepare(c) {
  c.audio = $("moshi-audio");
}

/** Starts the call `c` (microphone open in `c.stream`); failures are shown and end it through `c.end()`. */
export async function open(c, { model, key }) {
  Object.assign(stats, {
    packetsSent: 0, samplesReceived: 0, concealedSamples: 0, audioEnergy: 0, audioSeconds: 0, jitterBufferMs: 0,
  });
  setState("connecting");
  try {
    c.secret = await mintSecret(model, key);
    if (!c.closing) await offer(c, model);
  } catch (e) {
    if (!c.closing) {
      reportError(e.message);
      c.end();
    }
  }
}

export function close(c) {
  clearInterval(c.statsTimer);
  const pc = c.pc;
  // Hang up first, then close: the server then ends the call on the request, not on a vanished peer.
  const hungUp = c.callId && !c.hungUp ? hangup(c) : Promise.resolve();
  hungUp.finally(() => pc?.close());
  if (c.audio) c.audio.srcObject = null;
  c.pc = null;
}

async function mintSecret(model, key) {
  const headers = { "Content-Type": "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await post("v1/realtime/client_secrets", {
    headers,
    body: JSON.stringify({ session: { type: "realtime", model } }),
  });
  const { value } = await response.json();
  if (typeof value !== "string" || !value.startsWith("ek_")) {
    throw new Error("POST v1/realtime/client_secrets answered without an ek_ key.");
  }
  return value;
}

async function offer(c, model) {
  const pc = (c.pc = new RTCPeerConnection());
  for (const track of c.stream.getAudioTracks()) pc.addTrack(track, c.stream);
  pc.ontrack = (event) => play(c, event);
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "failed") {
      ended(c, "the WebRTC connection failed (no UDP path between this browser and the server: a firewall, " +
        "or a NAT that needs a TURN server)");
    }
  };
  const channel = pc.createDataChannel("oai-events");
  channel.onopen = () => channel.send(JSON.stringify(sessionUpdate()));
  channel.onmessage = (message) => {
    const event = parseEvent(message.data);
    if (event) onEvent(event);
  };
  channel.onclose = () => ended(c, "the server closed the call's event channel");

  await pc.setLocalDescription();
  await gathered(pc);
  if (c.closing) return;
  const response = await post(`v1/realtime/calls?model=${encodeURIComponent(model)}`, {
    headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${c.secret}` },
    body: pc.localDescription.sdp,
  });
  // `Location: …/v1/realtime/calls/rtc_…`; its last segment, as agents-js reads it (the page may sit
  // behind a path prefix, so the hangup URL is built relative to the page, not from the absolute path).
  c.callId = response.headers.get("Location")?.split("/").pop();
  const answer = await response.text();
  if (c.closing) {
    if (c.callId && !c.hungUp) hangup(c); // Stop was pressed while the server answered
    return;
  }
  await pc.setRemoteDescription({ type: "answer", sdp: answer });
  c.statsTimer = setInterval(() => readStats(pc), STATS_MS);
}

function onEvent(event) {
  if (event.type === "output_audio_buffer.started") stats.audioBufferStarts++;
  showEvent(event);
}

function play(c, event) {
  c.audio.srcObject = event.streams[0] ?? new MediaStream([event.track]);
  c.audio.play().catch((e) => {
    if (!c.closing) warn(`The browser would not play Moshi's audio (${e.name}): press Stop, then Talk again.`);
  });
}

/** The call ended without Stop (the server hung up, or the connection failed). */
function ended(c, why) {
  if (c.closing) return;
  c.hungUp = true; // nothing left to hang up
  reportError(`The call ended: ${why}.`);
  c.end();
}

function hangup(c) {
  c.hungUp = true;
  const url = new URL(`v1/realtime/calls/${encodeURIComponent(c.callId)}/hangup`, location.href);
  // Best effort: closing the peer connection ends the call too. keepalive when the page goes away: the
  // request then outlives it. The (empty) body is read, or the request stays open until the page closes.
  const init = { method: "POST", headers: { Authorization: `Bearer ${c.secret}` }, keepalive: c.unloading };
  return fetch(url, init).then((response) => response.arrayBuffer()).catch(() => {});
}

/** POSTs to the server's API; a failure is an Error whose message says what and why. */
async function post(path, init) {
  const what = `POST ${path.split("?")[0]}`;
  let response;
  try {
    response = await fetch(new URL(path, location.href), { method: "POST", ...init });
  } catch (e) {
    throw new Error(`Could not reach the server (${what}): ${e.message}`);
  }
  if (response.ok) return response;
  let detail = "";
  try {
    const e = (await response.json()).error ?? {};
    detail = `: ${e.code ?? e.type ?? ""}: ${e.message ?? JSON.stringify(e)}`;
  } catch {
    // not JSON: the status says it
  }
  throw new Error(`${what} answered ${response.status} ${response.statusText}${detail}`);
}

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, GATHER_MS);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState !== "complete") return;
      clearTimeout(timer);
      resolve();
    });
  });
}

/** The audio counters as the browser measures them: what went up, and what of Moshi it decoded and played. */
async function readStats(pc) {
  const report = await pc.getStats().catch(() => null);
  report?.forEach((s) => {
    if (s.kind !== "audio") return;
    if (s.type === "outbound-rtp") stats.packetsSent = s.packetsSent ?? 0;
    if (s.type !== "inbound-rtp") return;
    Object.assign(stats, {
      samplesReceived: s.totalSamplesReceived ?? 0,
      concealedSamples: s.concealedSamples ?? 0,
      audioEnergy: s.totalAudioEnergy ?? 0,
      audioSeconds: s.totalSamplesDuration ?? 0,
      jitterBufferMs: s.jitterBufferEmittedCount ? (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount : 0,
    });
  });
}
