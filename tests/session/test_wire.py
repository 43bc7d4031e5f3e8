"""What goes on the wire: every server event type the session emits, in both dialects, is strictly
validated against its SDK type (the harness checks each event) in one scenario touching every feature."""

from __future__ import annotations

from serve_app.protocol.dialect import Dialect

from .conftest import FAST
from .harness import Harness, speak, spoken_item, types_of, user_text

EMITTED = {
    Dialect.GA: {
        "session.created",
        "session.updated",
        "error",
        "input_audio_buffer.committed",
        "input_audio_buffer.cleared",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.retrieved",
        "conversation.item.deleted",
        "conversation.item.truncated",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.input_audio_transcription.failed",
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_text.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
        "output_audio_buffer.cleared",
    },
}
EMITTED[Dialect.BETA] = (
    EMITTED[Dialect.GA] - {"conversation.item.added", "conversation.item.done"}
    | {"conversation.created", "conversation.item.created"}
) - {
    name for name in EMITTED[Dialect.GA] if name.startswith(("response.output_audio", "response.output_text"))
} | {
    "response.audio.delta",
    "response.audio_transcript.delta",
    "response.text.delta",
    "response.audio.done",
    "response.audio_transcript.done",
    "response.text.done",
}


def test_every_server_event_we_emit_is_strictly_validated(dialect: Dialect) -> None:
    """One scenario touching every feature; the harness validated each event type at least once."""
    h = Harness(dialect, FAST, connect=False)
    h.session.connect()
    h.events()
    h.update_input(transcription={"model": "whisper-1"})
    h.append(4800)
    item_id = h.send({"type": "input_audio_buffer.commit"})[0]["item_id"]
    h.session.input_transcription_completed(item_id, "hi")
    h.session.input_transcription_failed(item_id, "again")
    h.append(100)
    h.send({"type": "input_audio_buffer.clear"})
    h.session.speech_started(0)
    h.append(2400)
    h.session.speech_stopped(100)
    h.events()
    h.send({"type": "conversation.item.retrieve", "item_id": item_id})
    h.send({"type": "conversation.item.create", "item": user_text("x", "tmp")})
    h.send({"type": "conversation.item.delete", "item_id": "tmp"})
    spoken = spoken_item(h, "a", " b")
    h.send({"type": "conversation.item.truncate", "item_id": spoken, "content_index": 0, "audio_end_ms": 80})
    h.frame(speaking=True, text="c")
    h.send({"type": "output_audio_buffer.clear"})
    h.send({"type": "response.cancel"})
    h.frames(3, speaking=False)
    h.send({"type": "response.create", "response": h.response_params(text_only=True)})
    speak(h, "text")
    assert set(types_of(h.log)) == EMITTED[dialect]
