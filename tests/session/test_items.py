"""Conversation items through the session: create (client ids, placement), retrieve (with audio),
delete and truncate, and what they may not do to the item Moshi is speaking into."""

from __future__ import annotations

import base64

from serve_app.constants import FRAME_SAMPLES
from serve_app.protocol.dialect import Dialect

from .harness import Harness, only_error, speak, spoken_item, types_of, user_text


def test_item_create_keeps_client_ids_and_honours_previous_item_id(h: Harness) -> None:
    pipecat_id = "0123456789abcdef0123456789abcdef"
    events = h.send({"type": "conversation.item.create", "item": user_text("one", pipecat_id)})
    announce = events[0]
    assert announce["type"] == h.announce_types[0]
    assert announce["item"]["id"] == pipecat_id and announce["previous_item_id"] is None
    assert announce["item"]["status"] == "completed" and announce["item"]["object"] == "realtime.item"
    events = h.send({"type": "conversation.item.create", "item": user_text("two")})
    second = events[0]["item"]["id"]
    assert second.startswith("item_") and events[0]["previous_item_id"] == pipecat_id
    events = h.send(
        {"type": "conversation.item.create", "previous_item_id": pipecat_id, "item": user_text("mid", "m")}
    )
    assert events[0]["previous_item_id"] == pipecat_id
    events = h.send(
        {"type": "conversation.item.create", "previous_item_id": "root", "item": user_text("zero", "z")}
    )
    assert events[0]["previous_item_id"] is None
    assert h.session.conversation.ids == ["z", pipecat_id, "m", second]


def test_item_create_errors(h: Harness) -> None:
    h.send({"type": "conversation.item.create", "item": user_text("one", "a")})
    error = only_error(
        h.send({"type": "conversation.item.create", "event_id": "d", "item": user_text("x", "a")})
    )
    assert error["code"] == "item_already_exists" and error["event_id"] == "d"
    error = only_error(
        h.send({"type": "conversation.item.create", "previous_item_id": "nope", "item": user_text("x")})
    )
    assert error["code"] == "item_not_found" and error["param"] == "previous_item_id"
    bad_audio = {"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": "%%%"}]}
    error = only_error(h.send({"type": "conversation.item.create", "item": bad_audio}))
    assert error["code"] == "invalid_audio" and error["param"] == "item.content[0].audio"


def test_item_create_function_call_items(dialect: Dialect) -> None:
    h = Harness(dialect)
    call = {"type": "function_call", "name": "lookup", "arguments": "{}", "call_id": "call_1"}
    output = {"type": "function_call_output", "call_id": "call_1", "output": "42"}
    for item in (call, output):
        events = h.send({"type": "conversation.item.create", "item": item})
        assert events[0]["item"]["type"] == item["type"] and events[0]["item"]["status"] == "completed"


def test_item_retrieve_and_delete(h: Harness) -> None:
    h.send({"type": "conversation.item.create", "item": user_text("hello", "a")})
    h.append(4800)
    user_item = h.send({"type": "input_audio_buffer.commit"})[0]["item_id"]
    (event,) = h.send({"type": "conversation.item.retrieve", "item_id": "a"})
    assert event["type"] == "conversation.item.retrieved"
    assert event["item"]["content"] == [{"type": "input_text", "text": "hello"}]
    (event,) = h.send({"type": "conversation.item.retrieve", "item_id": user_item})
    (part,) = event["item"]["content"]
    assert part["type"] == "input_audio" and len(base64.b64decode(part["audio"])) == 9600  # audio included
    (event,) = h.send({"type": "conversation.item.delete", "event_id": "del", "item_id": "a"})
    assert event == {**event, "type": "conversation.item.deleted", "item_id": "a"}
    for kind in ("conversation.item.retrieve", "conversation.item.delete"):
        error = only_error(h.send({"type": kind, "event_id": "r", "item_id": "a"}))
        assert error["code"] == "item_not_found" and error["param"] == "item_id" and error["event_id"] == "r"


def test_assistant_item_retrieval_includes_its_audio(h: Harness) -> None:
    events = speak(h, "hi", " there")
    item_id = events[1]["item"]["id"]
    (event,) = h.send({"type": "conversation.item.retrieve", "item_id": item_id})
    (part,) = event["item"]["content"]
    assert part["transcript"] == "hi there"
    assert len(base64.b64decode(part["audio"])) == 5 * FRAME_SAMPLES * 2


def test_deleting_the_item_being_spoken_is_refused(h: Harness) -> None:
    events = h.frame(speaking=True, text="hi")
    item_id = events[1]["item"]["id"]
    error = only_error(h.send({"type": "conversation.item.delete", "item_id": item_id}))
    assert error["code"] == "item_in_progress"


def test_truncate_trims_the_transcript_to_what_was_played(h: Harness) -> None:
    item_id = spoken_item(h, " one", " two", " three")  # 3 speaking + 3 silent frames = 480 ms
    (event,) = h.send(
        {
            "type": "conversation.item.truncate",
            "event_id": "t",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 100,
        }
    )
    assert event == {
        **event,
        "type": "conversation.item.truncated",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": 100,
    }
    (retrieved,) = h.send({"type": "conversation.item.retrieve", "item_id": item_id})
    (part,) = retrieved["item"]["content"]
    assert part["transcript"] == "one two"  # frames starting at 0 and 80 ms were (partly) played
    assert len(base64.b64decode(part["audio"])) == 100 * 48
    # audio_end_ms=0 leaves nothing.
    h.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 0})
    (retrieved,) = h.send({"type": "conversation.item.retrieve", "item_id": item_id})
    assert retrieved["item"]["content"][0]["transcript"] == ""


def test_truncate_errors(h: Harness) -> None:
    item_id = spoken_item(h, "a", "b")  # 5 frames = 400 ms
    h.send({"type": "conversation.item.create", "item": user_text("hi", "u")})
    cases = [
        ({"item_id": "nope", "audio_end_ms": 0}, "item_not_found", "item_id"),
        ({"item_id": "u", "audio_end_ms": 0}, "unsupported_content_type", "item_id"),
        ({"item_id": item_id, "audio_end_ms": 401}, "audio_end_ms_out_of_range", "audio_end_ms"),
        ({"item_id": item_id, "audio_end_ms": -1}, "audio_end_ms_out_of_range", "audio_end_ms"),
        (
            {"item_id": item_id, "audio_end_ms": 10, "content_index": 1},
            "content_index_out_of_range",
            "content_index",
        ),
    ]
    for fields, code, param in cases:
        event = {"type": "conversation.item.truncate", "event_id": "t", "content_index": 0, **fields}
        error = only_error(h.send(event))
        assert (error["code"], error["param"], error["event_id"]) == (code, param, "t")
    assert (
        only_error(
            h.send(
                {"type": "conversation.item.truncate", "item_id": "u", "content_index": 0, "audio_end_ms": 0}
            )
        )["message"]
        == "Only model output audio messages can be truncated"
    )
    error = only_error(
        h.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": 401,
            }
        )
    )
    assert error["message"] == "Audio content of 400ms is already shorter than 401ms"


def test_truncating_the_item_being_spoken_stops_the_response(h: Harness) -> None:
    events = h.frames(4, speaking=True, text=" word")
    item_id = events[1]["item"]["id"]
    events = h.send(
        {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 160}
    )
    kinds = types_of(events)
    assert kinds[-2:] == ["response.done", "conversation.item.truncated"]
    done = events[-2]["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "client_cancelled"
    assert done["output"][0]["content"][0]["transcript"] == "word word"
    assert h.frames(2, speaking=True, text="x") == []  # muted until Moshi's utterance ends
