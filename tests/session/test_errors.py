"""Client errors through the session: every malformed or illegal client event gets exactly one `error`
(its event_id echoed, its param named) and the session goes on. The 10,500-event fuzz is in test_fuzz.py."""

from __future__ import annotations

import pytest

from serve_app.session.state import SessionState, StateError

from .harness import Harness, only_error, speak

MALFORMED = [
    ("not json", "invalid_json", None, None),
    (b"\xff\xfe", "invalid_json", None, None),
    ("[1, 2]", "invalid_event", None, None),
    ('"text"', "invalid_event", None, None),
    ('{"event_id": "m1"}', "invalid_event", "type", "m1"),
    ('{"type": "no.such.event", "event_id": "m2"}', "unknown_event_type", "type", "m2"),
    ('{"type": "input_audio_buffer.append", "event_id": "m3"}', "invalid_event", "audio", "m3"),
    (
        '{"type": "input_audio_buffer.append", "event_id": "m4", "audio": "***"}',
        "invalid_audio",
        "audio",
        "m4",
    ),
    (
        '{"type": "input_audio_buffer.append", "event_id": "m5", "audio": "AAAA"}',
        "invalid_audio",
        "audio",
        "m5",
    ),
    (
        '{"type": "conversation.item.truncate", "event_id": "m6", "item_id": "x", "content_index": 0}',
        "invalid_event",
        "audio_end_ms",
        "m6",
    ),
    (
        '{"type": "conversation.item.create", "event_id": "m7", '
        '"item": {"type": "message", "role": "robot", "content": []}}',
        "invalid_event",
        "item.role",
        "m7",
    ),
    (
        '{"type": "conversation.item.retrieve", "event_id": "m8", "item_id": 5}',
        "invalid_event",
        "item_id",
        "m8",
    ),
    (
        '{"type": "response.create", "event_id": "m9", "response": {"metadata": {"n": 1}}}',
        "invalid_event",
        "response.metadata.n",
        "m9",
    ),
]


@pytest.mark.parametrize(("message", "code", "param", "event_id"), MALFORMED)
def test_malformed_client_messages_get_one_error_and_the_session_goes_on(
    h: Harness, message: str | bytes, code: str, param: str | None, event_id: str | None
) -> None:
    error = only_error(h.send(message))
    assert (error["code"], error["param"], error["event_id"]) == (code, param, event_id)
    assert error["type"] == "invalid_request_error" and error["message"]
    # Still working:
    h.append(2400)
    assert h.send({"type": "input_audio_buffer.commit"})[0]["type"] == "input_audio_buffer.committed"
    assert speak(h, "ok")[-1]["type"] == "response.done"


def test_an_illegal_transition_caused_by_a_client_event_becomes_one_error(h: Harness) -> None:
    def illegal(event: object) -> None:
        raise StateError("clear the buffer", SessionState.OPEN, SessionState.CLOSED)

    h.session._handlers["input_audio_buffer.clear"] = illegal
    error = only_error(h.send({"type": "input_audio_buffer.clear", "event_id": "s1"}))
    assert error["code"] == "invalid_state" and error["event_id"] == "s1"
    assert error["message"] == "clear the buffer: expected state 'open', but it is 'closed'."
