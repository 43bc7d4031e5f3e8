"""A session's lifecycle through its sans-I/O face: connect, the one drain, fail/close, the shell's
contract (what is a shell bug), and the settings it reads in frames."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.port import EngineFrame
from serve_app.protocol.dialect import Dialect
from serve_app.session.session import RealtimeSession
from serve_app.session.settings import SessionSettings
from serve_app.session.state import SessionState, StateError

from .conftest import FAST
from .harness import Harness, types_of


def test_connect_sends_session_created_then_beta_conversation_created(dialect: Dialect) -> None:
    h = Harness(dialect, connect=False)
    assert h.session.state is SessionState.CONNECTING
    h.session.connect()
    events = h.events()
    assert types_of(events) == ["session.created", *h.pick(ga=[], beta=["conversation.created"])]
    session = events[0]["session"]
    assert session["id"] == "sess_test"
    assert session["expires_at"] == 1_700_000_000 + 3600  # the clock the shell passed in, never read
    view = h.view(session)
    assert view.get("model") == h.pick(ga="moshi-sft", beta=None)
    assert view["input_format"] == "pcm16"  # GA: exactly {"type": "audio/pcm", "rate": 24000}
    assert view["turn_detection"]["type"] == "server_vad"
    assert view["voice"] == "alloy"
    conversations = [e["conversation"]["id"] for e in events[1:]]
    assert all(cid.startswith("conv_") for cid in conversations) and len(conversations) == h.pick(
        ga=0, beta=1
    )
    assert h.session.state is SessionState.OPEN


def test_connect_twice_and_events_before_connect_are_shell_bugs() -> None:
    h = Harness(Dialect.GA, connect=False)
    with pytest.raises(StateError, match="expected state 'open', but it is 'connecting'"):
        h.session.receive_client_text('{"type":"input_audio_buffer.clear"}')
    h.session.connect()
    with pytest.raises(StateError, match="expected state 'connecting'"):
        h.session.connect()


@pytest.mark.parametrize(
    "code", ["session_lost", "server_at_capacity", "model_not_found", "invalid_api_key", "server_error"]
)
def test_fail_queues_one_error_and_closes(dialect: Dialect, code: str) -> None:
    h = Harness(dialect, connect=False)  # rejections happen before session.created
    h.session.fail(code)
    (event,) = h.events()
    assert event["error"]["code"] == code and event["error"]["event_id"] is None
    assert h.session.closed
    h.session.fail("server_error")
    h.session.receive_engine_frame(EngineFrame(np.zeros(FRAME_SAMPLES, np.float32), "x", True))
    h.session.receive_client_text("garbage")
    assert h.events() == []


def test_fail_mid_session_with_a_custom_message(h: Harness) -> None:
    """The response being spoken ends `failed` (every response.created gets its response.done), then
    the one error."""
    h.frame(speaking=True, text="hi")
    h.events()
    h.session.fail("session_lost", "replica 3 died")
    *closing, done, event = h.events()
    assert "response.output_item.done" in [e["type"] for e in closing]
    assert done["type"] == "response.done" and done["response"]["status"] == "failed"
    assert done["response"]["status_details"] == {
        "type": "failed",
        "error": {"type": "server_error", "code": "session_lost"},
    }
    assert event["error"] == {
        "type": "server_error",
        "code": "session_lost",
        "message": "replica 3 died",
        "param": None,
        "event_id": None,
    }


def test_engine_frames_must_be_one_mimi_frame(h: Harness) -> None:
    with pytest.raises(ValueError, match="1920"):
        h.session.receive_engine_frame(EngineFrame(np.zeros(10, np.float32), None, False))


def test_events_are_json_text_with_unique_event_ids() -> None:
    session = RealtimeSession(session_id="s", model_id="m", dialect=Dialect.GA, settings=FAST, now_epoch_s=0)
    session.connect()
    session.receive_client_text("nope")
    frames = [event.text for event in session.events_to_send()]
    assert all(isinstance(f, str) for f in frames)
    ids = [json.loads(f)["event_id"] for f in frames]
    assert len(set(ids)) == len(ids)
    assert session.events_to_send() == []


def test_drained_events_carry_their_ga_kind_and_error_code(dialect: Dialect) -> None:
    """The one drain gives the shell what it counts without parsing: the GA type and the error code."""
    session = RealtimeSession(session_id="s", model_id="m", dialect=dialect, settings=FAST, now_epoch_s=0)
    session.connect()
    session.receive_client_text('{"type": "response.cancel"}')
    *_, error = session.events_to_send()
    assert (error.kind, error.error_code) == ("error", "response_cancel_not_active")


def test_settings_are_read_in_frames() -> None:
    h = Harness(Dialect.GA, SessionSettings(utterance_silence_ms=800))
    events = h.frame(speaking=True, text="x") + h.frames(9, speaking=False)
    assert "response.done" not in types_of(events)
    assert types_of(h.frame(speaking=False))[-1] == "response.done"
