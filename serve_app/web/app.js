// The demo page: the model list, the Talk/Stop button, the microphone, and the choice of transport. WebRTC
// (webrtc-call.js) is the default: Moshi plays through the peer connection, so the browser's echo canceller
// keeps Moshi from hearing itself. The WebSocket (websocket-call.js) plays through Web Audio: headphones.
// Both speak the GA dialect of the Realtime protocol (events.js); what the page shows lives in ui.js.
import * as webrtc from "./webrtc-call.js";
import * as websocket from "./websocket-call.js";
import {
  $, clearErrors, endPendingLines, renderStats, reportError, setState, setVad, showRandomWeights, stats, warn,
} from "./ui.js";

const TRANSPORTS = { webrtc, websocket };

let call = null; // the conversation in progress, or null

async function loadModels() {
  try {
    const response = await fetch(new URL("v1/models", location.href));
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const body = await response.json();
    $("model").replaceChildren(
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

function describeMicError(e) {
  if (e.name === "NotAllowedError" || e.name === "SecurityError") {
    return "Microphone permission was denied. Allow the microphone for this page (the icon in the address bar) and press Talk again.";
  }
  if (e.name === "NotFoundError" || e.name === "OverconstrainedError") return "No usable microphone was found.";
  if (e.name === "NotReadableError") return "The microphone could not be opened (another application may be using it).";
  return `Could not open the microphone: ${e.name}: ${e.message}`;
}

async function start() {
  clearErrors();
  const model = $("model").value;
  if (!model) return reportError("No model to talk to (the model list is empty or failed to load).");
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    return reportError(
      "The microphone needs a secure context: open this page over https, or as http://localhost or " +
        "http://127.0.0.1 (a plain http:// address of another host gets no getUserMedia).",
    );
  }
  const name = $("transport").value;
  const transport = TRANSPORTS[name];
  const problem = transport.unsupported();
  if (problem) return reportError(problem);
  const c = { closing: false, transport };
  c.end = () => stop(c);
  call = c;
  stats.transport = name;
  setState("starting");
  transport.prepare(c); // still inside the click, before any await
  try {
    // The microphone before the peer connection: Chrome then offers its real host addresses (not mDNS
    // names), and both transports get the browser's echo cancellation on the captured track.
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
  await transport.open(c, { model, key: $("api-key").value.trim() });
}

/** Ends `c` (by default the current call); safe to repeat, and for a call that a newer one replaced. */
function stop(c = call) {
  if (!c) return;
  const first = !c.closing;
  c.closing = true;
  if (first) c.transport.close(c);
  c.stream?.getTracks().forEach((track) => track.stop());
  c.stream = null;
  if (call === c) {
    call = null;
    setVad("—", false);
    endPendingLines();
    setState("idle");
  }
}

function showTransportHint() {
  // Only the WebSocket mode plays outside the echo canceller's reference.
  $("headphones").hidden = $("transport").value !== "websocket";
}

$("controls").addEventListener("submit", (event) => {
  event.preventDefault();
  if (call) stop();
  else start();
});
$("transport").addEventListener("change", showTransportHint);
addEventListener("pagehide", () => {
  if (!call) return;
  call.unloading = true; // hang a WebRTC call up rather than leave it to time out
  stop();
});
showTransportHint();
setInterval(renderStats, 250);
renderStats();
loadModels();
