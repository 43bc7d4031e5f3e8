"""Session limits in the sans-I/O core: message size, session duration, idle time, conversation size."""

from __future__ import annotations

import base64
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


def test_real_time_streaming_never_meets_the_append_rate(dialect: Dialect) -> None:
    h = Harness(dialect, FAST.model_copy(update={"max_append_rate": 1.5, "append_burst_ms": 1000}))
    h.clock(0.0)
    for step in range(1, 601):  # 60 s of 100 ms chunks, each on its own clock tick
        assert h.append(2400) == []
        h.clock(step / 10)
        h.frames(1, speaking=False)  # Moshi steps the input, so the backlog stays small
    assert not h.session.closed


def test_a_flood_of_appends_is_refused_before_decoding_and_allowed_again_as_the_rate_refills(
    dialect: Dialect,
) -> None:
    h = Harness(dialect, FAST.model_copy(update={"max_append_rate": 2.0, "append_burst_ms": 1000}))
    h.clock(0.0)
    assert h.append(24_000) == []  # 1 s at once: the whole burst
    refused = {"type": "input_audio_buffer.append", "event_id": "flood", "audio": b64_pcm16(2400)}
    error = only_error(h.send(refused))
    assert error["code"] == "input_audio_rate_exceeded" and error["event_id"] == "flood"
    assert "2x real time" in error["message"] and "100ms" in error["message"]
    assert len(h.session.audio_for_engine()) == 1  # the refused chunk never reached Moshi
    # Not even malformed audio is looked at: the size alone refuses it.
    junk = only_error(h.send({"type": "input_audio_buffer.append", "audio": "!" * 400}))
    assert junk["code"] == "input_audio_rate_exceeded"
    h.clock(0.1)  # 100 ms at 2x real time credits 200 ms
    assert h.append(4800) == []
    assert only_error(h.append(480))["code"] == "input_audio_rate_exceeded"
    assert not h.session.closed


def test_the_append_rate_judges_g711_by_its_own_sample_rate(dialect: Dialect) -> None:
    h = Harness(dialect, FAST.model_copy(update={"max_append_rate": 2.0, "append_burst_ms": 1000}))
    h.update_session(input_format="g711_ulaw")
    h.clock(0.0)
    second = base64.b64encode(bytes([0xFF]) * 8000).decode()  # 1 s of μ-law silence at 8 kHz
    assert h.send({"type": "input_audio_buffer.append", "audio": second}) == []
    assert only_error(h.send({"type": "input_audio_buffer.append", "audio": second[:400]}))["code"] == (
        "input_audio_rate_exceeded"
    )


def test_no_append_rate_means_only_the_backlog_bounds_input(dialect: Dialect) -> None:
    h = Harness(dialect, FAST.model_copy(update={"max_append_rate": None, "max_input_backlog_ms": 10_000}))
    for _ in range(50):
        assert h.append(4800) == []  # 10 s in no time at all
    assert only_error(h.append(480))["code"] == "input_audio_backlog_full"
