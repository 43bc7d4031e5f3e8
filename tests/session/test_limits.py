"""Session limits in the sans-I/O core: message size, session duration, idle time, conversation size."""

from __future__ import annotations

import json

from serve_app.protocol.dialect import Dialect
from serve_app.session.settings import SessionSettings

from .conftest import FAST
from .harness import Harness, b64_pcm16, only_error, types_of


def user_text(text: str) -> dict[str, object]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def test_an_oversized_message_is_answered_and_dropped_and_the_session_goes_on(dialect: Dialect) -> None:
    h = Harness(dialect, FAST.model_copy(update={"max_message_bytes": 4096}))
    append = {"type": "input_audio_buffer.append", "event_id": "big", "audio": b64_pcm16(4000)}
    error = only_error(h.send(json.dumps(append)))
    assert error["code"] == "message_too_large" and error["type"] == "invalid_request_error"
    assert "4096 bytes" in error["message"]
    assert not h.session.audio_for_engine()  # nothing of it reached Moshi
    assert h.append(1000) == [] and len(h.session.audio_for_engine()) == 1  # still open
    assert not h.session.closed


def test_a_session_expires_after_its_maximum_duration(dialect: Dialect) -> None:
    h = Harness(dialect, FAST.model_copy(update={"max_session_s": 60, "idle_timeout_s": None}))
    assert h.clock(100.0) == []  # the duration counts from the first clock tick
    assert h.clock(159.9) == []
    error = only_error(h.clock(160.0))
    assert error["code"] == "session_expired" and "60 seconds" in error["message"]
    assert h.session.closed and h.session.failure == "session_expired"
    assert h.clock(161.0) == []


def test_an_open_response_is_done_before_the_expiry_error(dialect: Dialect) -> None:
    h = Harness(dialect, FAST.model_copy(update={"max_session_s": 10, "idle_timeout_s": None}))
    h.clock(0.0)
    h.frames(2, speaking=True)  # Moshi speaks: a response is open
    events = h.clock(10.0)
    assert types_of(events)[-2:] == [h.name("response.done"), "error"]
    assert events[-2]["response"]["status"] == "failed"


def test_a_silent_client_is_ended_after_the_idle_timeout(dialect: Dialect) -> None:
    h = Harness(dialect, FAST.model_copy(update={"idle_timeout_s": 5}))
    h.clock(0.0)
    for t in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0):
        h.append(480)  # a client message before every tick keeps it alive
        assert h.clock(t) == []
    assert h.clock(10.9) == []  # last heard at the 6.0 tick
    error = only_error(h.clock(11.0))
    assert error["code"] == "idle_timeout" and h.session.failure == "idle_timeout"


def test_engine_frames_alone_do_not_keep_a_session_alive(dialect: Dialect) -> None:
    h = Harness(dialect, FAST.model_copy(update={"idle_timeout_s": 2}))
    h.clock(0.0)
    h.frames(5, speaking=False)
    assert only_error(h.clock(2.0))["code"] == "idle_timeout"


def test_the_conversation_keeps_at_most_max_items_oldest_deleted_first(dialect: Dialect) -> None:
    h = Harness(dialect, SessionSettings(max_items=3))
    ids = []
    for k in range(5):
        events = h.send({"type": "conversation.item.create", "item": user_text(f"t{k}")})
        ids.append(events[0]["item"]["id"])
        deleted = [e["item_id"] for e in events if e["type"] == "conversation.item.deleted"]
        assert deleted == ([] if k < 3 else [ids[k - 3]])
    assert h.session.conversation.ids == ids[2:]


def test_trimming_never_deletes_the_item_being_spoken(dialect: Dialect) -> None:
    h = Harness(dialect, FAST.model_copy(update={"max_items": 2}))
    h.frames(2, speaking=True)  # Moshi's item, streaming
    spoken = h.session.conversation.ids[0]
    for k in range(3):
        h.send({"type": "conversation.item.create", "item": user_text(f"t{k}")})
    assert spoken in h.session.conversation.ids and len(h.session.conversation) == 2
