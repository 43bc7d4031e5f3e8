"""Transcription sessions in the core (transcription_session.py): their session objects in both dialects,
their updates, server VAD's and manual turns turned into transcription requests and events, and what they
refuse (responses, logprobs, the other kind's update). Every event is validated strictly by the SDK types."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.port import EngineFrame
from serve_app.protocol.dialect import Dialect
from serve_app.session.config import SessionKind
from serve_app.session.session import RealtimeSession
from serve_app.session.settings import SessionSettings

from .harness import SERVER_TYPES, b64_pcm16

BACKEND = "pocketsphinx"
LOGPROBS = "item.input_audio_transcription.logprobs"


class Captions:
    """A connected transcription session; every event it sends is strictly valid for its dialect."""

    def __init__(self, dialect: Dialect, settings: SessionSettings | None = None) -> None:
        self.dialect = dialect
        self.session = RealtimeSession(
            session_id="sess_captions",
            model_id=BACKEND,
            dialect=dialect,
            settings=settings or SessionSettings(),
            now_epoch_s=1_700_000_000,
            kind=SessionKind.TRANSCRIPTION,
        )
        self.session.connect()
        self.created = self.events()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for outgoing in self.session.events_to_send():
            event = json.loads(outgoing.text)
            model = SERVER_TYPES[self.dialect].get(event["type"])
            assert model is not None, f"{event['type']} is not a {self.dialect} server event"
            model.model_validate(event, strict=True)
            assert event["event_id"].startswith("event_")
            assert not event["type"].startswith("response."), "a transcription session has no responses"
            out.append(event)
        return out

    def send(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        self.session.receive_client_text(json.dumps(event))
        return self.events()

    def update(self, **audio_input: Any) -> list[dict[str, Any]]:
        """The dialect's transcription update: GA session.update of type transcription (audio.input),
        beta transcription_session.update (flat)."""
        if self.dialect is Dialect.GA:
            session = {"type": "transcription", "audio": {"input": audio_input}}
            return self.send({"type": "session.update", "session": session})
        flat = {
            "format": "input_audio_format",
            "transcription": "input_audio_transcription",
            "noise_reduction": "input_audio_noise_reduction",
        }
        session = {flat.get(key, key): value for key, value in audio_input.items()}
        return self.send({"type": "transcription_session.update", "session": session})

    def input_settings(self, session: dict[str, Any]) -> dict[str, Any]:
        """The session object's input settings in GA's names, whatever the dialect."""
        if self.dialect is Dialect.GA:
            settings: dict[str, Any] = session["audio"]["input"]
            return settings
        return {
            "format": session["input_audio_format"],
            "transcription": session["input_audio_transcription"],
            "noise_reduction": session["input_audio_noise_reduction"],
            "turn_detection": session["turn_detection"],
        }

    def append(self, samples: int) -> list[dict[str, Any]]:
        return self.send({"type": "input_audio_buffer.append", "audio": b64_pcm16(samples)})


def test_session_created_is_a_transcription_session_in_either_dialect(dialect: Dialect) -> None:
    c = Captions(dialect)
    created = c.created[0]
    assert created["type"] == "session.created"
    session = created["session"]
    assert session["id"] == "sess_captions" and session["object"] == "realtime.transcription_session"
    assert "model" not in session and "output_modalities" not in session and "voice" not in session
    settings = c.input_settings(session)
    assert settings["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
    }
    if dialect is Dialect.GA:
        assert session["type"] == "transcription" and settings["transcription"] == {"model": BACKEND}
        assert [e["type"] for e in c.created] == ["session.created"]
    else:
        # The beta echo types the model as a Literal of OpenAI's names: the backend stays out of it.
        assert session["modalities"] == ["text"] and settings["transcription"] == {}
        assert [e["type"] for e in c.created] == ["session.created", "conversation.created"]


def test_an_update_sets_the_transcription_settings_and_echoes_them_all(dialect: Dialect) -> None:
    c = Captions(dialect)
    fmt: Any = {"type": "audio/pcmu"} if dialect is Dialect.GA else "g711_ulaw"
    (updated,) = c.update(
        format=fmt,
        transcription={"model": "whisper-1", "language": "en", "prompt": "weather"},
        turn_detection=None,
        noise_reduction={"type": "near_field"},
    )
    assert (
        updated["type"]
        == {Dialect.GA: "session.updated", Dialect.BETA: "transcription_session.updated"}[dialect]
    )
    settings = c.input_settings(updated["session"])
    assert settings["format"] == fmt and settings["turn_detection"] is None
    assert settings["transcription"] == {"model": "whisper-1", "language": "en", "prompt": "weather"}
    assert settings["noise_reduction"] == {"type": "near_field"}
    config = c.session.config
    assert config.transcription == {"model": "whisper-1", "language": "en", "prompt": "weather"}
    assert config.turn_detection is None and not config.audio_output
    # G.711 in: 800 bytes of μ-law are 100 ms at 8 kHz, committed as 100 ms of the user's turn.
    c.send({"type": "input_audio_buffer.append", "audio": b64_pcm16(400)})
    committed = c.send({"type": "input_audio_buffer.commit"})[0]
    assert committed["type"] == "input_audio_buffer.committed"
    (request,) = c.session.transcription_requests()
    assert request.item_id == committed["item_id"] and len(request.pcm) == 2400
    assert (request.model, request.language, request.prompt) == ("whisper-1", "en", "weather")


def test_logprobs_are_refused_by_name_and_the_session_goes_on(dialect: Dialect) -> None:
    c = Captions(dialect)
    session: dict[str, Any] = {"include": [LOGPROBS]}
    if dialect is Dialect.GA:
        event = {"type": "session.update", "event_id": "e1", "session": {"type": "transcription", **session}}
    else:
        event = {"type": "transcription_session.update", "event_id": "e1", "session": session}
    (error,) = c.send(event)
    assert error["type"] == "error"
    assert error["error"]["code"] == "invalid_session_update"
    assert error["error"]["param"] == "session.include" and error["error"]["event_id"] == "e1"
    assert LOGPROBS in error["error"]["message"] and "logprobs" in error["error"]["message"]
    assert c.update(turn_detection=None)[0]["type"].endswith("updated")


def test_responses_are_refused_in_words_and_none_is_ever_created(dialect: Dialect) -> None:
    c = Captions(dialect)
    (error,) = c.send({"type": "response.create", "event_id": "r1"})
    assert error["error"]["code"] == "invalid_event" and error["error"]["event_id"] == "r1"
    assert "transcription session" in error["error"]["message"]
    assert "never creates responses" in error["error"]["message"]
    # Nothing to cancel, ever: the benign code clients already handle.
    (error,) = c.send({"type": "response.cancel"})
    assert error["error"]["code"] == "response_cancel_not_active"
    with pytest.raises(RuntimeError, match="no Moshi slot"):
        c.session.receive_engine_frame(
            EngineFrame(pcm=np.zeros(FRAME_SAMPLES, np.float32), text=None, speaking=True)
        )


def test_the_other_kinds_update_is_refused_either_way(dialect: Dialect) -> None:
    c = Captions(dialect)
    session = {"type": "realtime"} if dialect is Dialect.GA else {"instructions": "hi"}
    (error,) = c.send({"type": "session.update", "session": session})
    assert error["error"]["code"] == "invalid_session_update"
    assert "transcription session" in error["error"]["message"]
    # And a speech-to-speech session cannot become one.
    realtime = RealtimeSession(
        session_id="sess_s2s",
        model_id="moshi-sft",
        dialect=dialect,
        settings=SessionSettings(),
        now_epoch_s=0,
    )
    realtime.connect()
    realtime.events_to_send()
    if dialect is Dialect.GA:
        realtime.receive_client_text(
            json.dumps({"type": "session.update", "session": {"type": "transcription"}})
        )
    else:
        realtime.receive_client_text(json.dumps({"type": "transcription_session.update", "session": {}}))
    (error_event,) = realtime.events_to_send()
    refused = json.loads(error_event.text)["error"]
    assert refused["code"] == "invalid_session_update" and "?intent=transcription" in refused["message"]


def test_server_vad_turns_are_committed_and_transcribed_with_the_sessions_backend(dialect: Dialect) -> None:
    c = Captions(dialect)
    c.append(24_000)
    item_id = c.session.speech_started(audio_start_ms=200)
    events = c.append(24_000)
    assert c.session.speech_stopped(audio_end_ms=1700, speech_end_ms=1200) == item_id
    events += c.events()
    kinds = [e["type"] for e in events]
    assert kinds[:3] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
    ]
    (request,) = c.session.transcription_requests()
    assert request.model == BACKEND and request.item_id == item_id
    assert (request.audio_start_ms, request.audio_end_ms, request.speech_end_ms) == (200, 1700, 1200)
    # A streaming backend's text while the user speaks, then the turn's transcript.
    c.session.input_transcription_delta(item_id, "the weather")
    c.session.input_transcription_completed(item_id, "the weather is nice", streamed=True)
    delta, completed = c.events()
    assert delta["type"] == "conversation.item.input_audio_transcription.delta"
    assert completed["type"] == "conversation.item.input_audio_transcription.completed"
    assert completed["transcript"] == "the weather is nice" and completed["item_id"] == item_id
    c.session.input_transcription_failed(item_id, "gone")
    (failed,) = c.events()
    assert failed["type"] == "conversation.item.input_audio_transcription.failed"
    assert c.session.active_response_id is None


def test_input_is_not_bounded_by_a_moshi_backlog_but_still_by_the_append_rate() -> None:
    settings = SessionSettings(max_input_backlog_ms=160, max_append_rate=1.0, append_burst_ms=2000)
    c = Captions(Dialect.GA, settings)
    assert c.append(24_000) == []  # 1 s, far past a Moshi backlog of 160 ms: no Moshi here
    assert len(c.session.audio_for_engine()) == 1  # the shell's VAD and ASR still hear it
    (error,) = c.append(48_000)
    assert error["error"]["code"] == "input_audio_rate_exceeded"
