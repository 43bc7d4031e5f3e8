// The realtime events both transports carry alike (GA dialect): the session.update the page sends, and what
// the page shows of the server's events (session state, VAD, both sides' transcripts, errors). Audio is the
// transports' own business: PCM deltas over the WebSocket, an Opus track over WebRTC.
import {
  renderStats, reportError, scrollLog, setState, setVad, stats, transcriptLine,
} from "./ui.js";

/** The page's session settings; `format` is the WebSocket's PCM (a WebRTC call's audio is the track's). */
export function sessionUpdate(format) {
  // interrupt_response off: Moshi is full duplex and yields by itself; cancelling its answer whenever the
  // user makes a sound would mute it mid-sentence (the server's VAD still reports speech and commits turns).
  const input = {
    turn_detection: { type: "server_vad", interrupt_response: false },
    transcription: { model: "pocketsphinx" },
  };
  const audio = format ? { input: { format, ...input }, output: { format } } : { input };
  return { type: "session.update", session: { type: "realtime", output_modalities: ["audio"], audio } };
}

/** Parses one message of the server's; null (and the error shown) when it is not JSON. */
export function parseEvent(data) {
  try {
    return JSON.parse(data);
  } catch {
    reportError("The server sent something that is not JSON.");
    return null;
  }
}

/** Shows `event` on the page; a type it does not know (a transport's own) is left to the caller. */
export function showEvent(event) {
  switch (event.type) {
    case "session.created":
      setState("connected");
      break;
    case "session.updated":
      setState("live");
      setVad("silent", false);
      break;
    case "input_audio_buffer.speech_started":
      setVad("speaking", true);
      transcriptLine(event.item_id, "You").p.classList.add("pending");
      scrollLog();
      break;
    case "input_audio_buffer.speech_stopped":
      setVad("silent", false);
      break;
    case "conversation.item.input_audio_transcription.delta": {
      const entry = transcriptLine(event.item_id, "You");
      entry.text.textContent += event.delta;
      entry.chars += event.delta.length;
      stats.userTranscriptChars += event.delta.length;
      scrollLog();
      break;
    }
    case "conversation.item.input_audio_transcription.completed": {
      const entry = transcriptLine(event.item_id, "You");
      entry.text.textContent = event.transcript || "(nothing recognised)";
      stats.userTranscriptChars += event.transcript.length - entry.chars;
      entry.chars = event.transcript.length;
      entry.p.classList.remove("pending");
      scrollLog();
      break;
    }
    case "conversation.item.input_audio_transcription.failed": {
      const entry = transcriptLine(event.item_id, "You");
      entry.p.classList.remove("pending");
      entry.text.textContent = "(not transcribed)";
      reportError(`Transcription failed: ${event.error?.message ?? "no reason given"}`);
      break;
    }
    case "response.output_audio_transcript.delta":
    case "response.audio_transcript.delta": {
      const entry = transcriptLine(event.response_id, "Moshi");
      entry.text.textContent += event.delta;
      stats.transcriptChars += event.delta.length;
      scrollLog();
      break;
    }
    case "error": {
      const e = event.error ?? {};
      reportError(`Server error ${e.code ?? e.type ?? ""}: ${e.message ?? JSON.stringify(e)}`);
      break;
    }
    default:
      return;
  }
  renderStats();
}
