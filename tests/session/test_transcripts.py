"""Transcripts of user turns through the session: requests go out only while transcription is on, and
an ASR's results come back as input_audio_transcription events on the item (batch here; streaming in
test_vad_hooks.py)."""

from __future__ import annotations

from .harness import Harness


def test_transcription_hook(h: Harness) -> None:
    h.append(2400)
    h.send({"type": "input_audio_buffer.commit"})
    assert h.session.transcription_requests() == []  # off by default
    h.update_input(transcription={"model": "whisper-1"})
    h.append(4800)
    item_id = h.send({"type": "input_audio_buffer.commit"})[0]["item_id"]
    (request,) = h.session.transcription_requests()
    assert request.item_id == item_id and len(request.pcm) == 4800
    h.session.input_transcription_completed(item_id, "hello there")
    delta, completed = h.events()
    assert delta["type"] == "conversation.item.input_audio_transcription.delta"
    assert (delta["content_index"], delta["delta"]) == (0, "hello there")
    assert completed["transcript"] == "hello there" and completed["usage"] == {
        "type": "duration",
        "seconds": 0.2,
    }
    (retrieved,) = h.send({"type": "conversation.item.retrieve", "item_id": item_id})
    assert retrieved["item"]["content"][0]["transcript"] == "hello there"
    h.session.input_transcription_failed(item_id, "asr down")
    (failed,) = h.events()
    assert failed["type"] == "conversation.item.input_audio_transcription.failed"
    h.session.input_transcription_completed("gone", "x")  # deleted/unknown items are ignored
    assert h.events() == []
