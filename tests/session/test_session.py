"""RealtimeSession end to end, in both dialects; every emitted event is strict-checked by the harness."""

from __future__ import annotations

import base64
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
from .harness import Harness, b64_pcm16, only_error, types_of


def speak(h: Harness, *pieces: str, silence: int = 3) -> list[dict]:
    """Moshi says one piece per frame, then `silence` non-speaking frames (3 end an utterance in FAST)."""
    events = []
    for piece in pieces:
        events += h.frame(speaking=True, text=piece)
    events += h.frames(silence, speaking=False)
    return events


def response_lifecycle(dialect: Dialect, *, deltas: list[str]) -> list[str]:
    """The order every client accepts (docs/ARCHITECTURE.md, "Event order of a response")."""
    item_announce = ["conversation.item.added"] if dialect is Dialect.GA else ["conversation.item.created"]
    done = ["conversation.item.done"] if dialect is Dialect.GA else []
    audio = "response.output_audio" if dialect is Dialect.GA else "response.audio"
    transcript = "response.output_audio_transcript" if dialect is Dialect.GA else "response.audio_transcript"
    names = {"audio": f"{audio}.delta", "text": f"{transcript}.delta"}
    return [
        "response.created",
        "response.output_item.added",
        *item_announce,
        "response.content_part.added",
        *[names[d] for d in deltas],
        f"{audio}.done",
        f"{transcript}.done",
        "response.content_part.done",
        "response.output_item.done",
        *done,
        "response.done",
    ]


# Connect ---------------------------------------------------------------------------------------


def test_connect_sends_session_created_then_beta_conversation_created(dialect: Dialect) -> None:
    h = Harness(dialect, connect=False)
    assert h.session.state is SessionState.CONNECTING
    h.session.connect()
    events = h.events()
    expected = ["session.created"] + (["conversation.created"] if dialect is Dialect.BETA else [])
    assert types_of(events) == expected
    session = events[0]["session"]
    assert session["id"] == "sess_test"
    assert session["expires_at"] == 1_700_000_000 + 3600
    if dialect is Dialect.GA:
        assert session["model"] == "moshi-sft"
        assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        assert session["audio"]["output"]["voice"] == "alloy"
    else:
        assert session["input_audio_format"] == "pcm16" and session["voice"] == "alloy"
        assert events[1]["conversation"]["id"].startswith("conv_")
    assert h.session.state is SessionState.OPEN


def test_connect_twice_and_events_before_connect_are_shell_bugs() -> None:
    h = Harness(Dialect.GA, connect=False)
    with pytest.raises(StateError, match="expected state 'open', but it is 'connecting'"):
        h.session.receive_client_text('{"type":"input_audio_buffer.clear"}')
    h.session.connect()
    with pytest.raises(StateError, match="expected state 'connecting'"):
        h.session.connect()


# session.update --------------------------------------------------------------------------------


def test_session_update_round_trip_ga() -> None:
    h = Harness(Dialect.GA)
    update = {
        "type": "realtime",
        "model": "gpt-realtime",
        "instructions": "be brief",
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 700},
                "transcription": {"model": "whisper-1", "language": "en"},
                "noise_reduction": {"type": "near_field"},
            },
            "output": {"format": {"type": "audio/pcma"}, "voice": "marin", "speed": 1.1},
        },
        "tools": [{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}}],
        "tool_choice": "required",
        "max_output_tokens": 500,
        "tracing": "auto",
        "truncation": "auto",
    }
    (event,) = h.send({"type": "session.update", "event_id": "u1", "session": update})
    assert event["type"] == "session.updated"
    session = event["session"]
    assert session["model"] == "moshi-sft"  # cannot change
    assert session["instructions"] == "be brief"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"] == {"format": {"type": "audio/pcma"}, "voice": "marin", "speed": 1.1}
    assert session["audio"]["input"]["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 700,
        "create_response": True,
        "interrupt_response": True,
    }
    assert session["audio"]["input"]["transcription"] == {"model": "whisper-1", "language": "en"}
    assert session["audio"]["input"]["noise_reduction"] == {"type": "near_field"}
    assert session["tools"][0]["name"] == "f" and session["tool_choice"] == "required"
    assert (
        session["max_output_tokens"] == 500
        and session["tracing"] == "auto"
        and session["truncation"] == "auto"
    )
    # Only present fields change; "" clears instructions, [] clears tools, null turns detection off.
    (event,) = h.send(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "instructions": "",
                "tools": [],
                "audio": {"input": {"turn_detection": None}},
            },
        }
    )
    session = event["session"]
    assert session["instructions"] == "" and session["tools"] == []
    assert session["audio"]["input"]["turn_detection"] is None
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}  # untouched
    assert session["audio"]["output"]["voice"] == "marin"


def test_session_update_round_trip_beta() -> None:
    h = Harness(Dialect.BETA)
    update = {
        "model": "gpt-4o-realtime-preview",
        "modalities": ["text"],
        "instructions": "hi",
        "voice": "verse",
        "input_audio_format": "g711_alaw",
        "output_audio_format": "g711_ulaw",
        "input_audio_transcription": {"model": "whisper-1"},
        "turn_detection": {"type": "semantic_vad", "eagerness": "high"},
        "tools": [{"type": "function", "name": "f", "parameters": {}}],
        "tool_choice": "none",
        "temperature": 0.6,
        "max_response_output_tokens": 100,
        "speed": 0.9,
    }
    (event,) = h.send({"type": "session.update", "session": update})
    session = event["session"]
    assert "model" not in session
    assert session["modalities"] == ["text"]
    assert session["voice"] == "verse" and session["speed"] == 0.9 and session["temperature"] == 0.6
    assert session["input_audio_format"] == "g711_alaw" and session["output_audio_format"] == "g711_ulaw"
    assert session["input_audio_transcription"] == {"model": "whisper-1"}
    assert session["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "high",
        "create_response": True,
        "interrupt_response": True,
    }
    assert session["tool_choice"] == "none" and session["max_response_output_tokens"] == 100
    (event,) = h.send({"type": "session.update", "session": {"turn_detection": None}})
    assert event["session"]["turn_detection"] is None and event["session"]["voice"] == "verse"


def test_beta_client_may_send_ga_shaped_session_fields() -> None:
    h = Harness(Dialect.BETA)
    ga_shaped = {
        "type": "realtime",
        "output_modalities": ["text"],
        "audio": {"input": {"format": {"type": "audio/pcmu"}}, "output": {"voice": "ash"}},
    }
    (event,) = h.send({"type": "session.update", "session": ga_shaped})
    session = event["session"]
    assert session["input_audio_format"] == "g711_ulaw" and session["voice"] == "ash"
    assert session["modalities"] == ["text"]
    # A native field wins over the GA-shaped one.
    (event,) = h.send(
        {"type": "session.update", "session": {"voice": "sage", "audio": {"output": {"voice": "coral"}}}}
    )
    assert event["session"]["voice"] == "sage"
    # The borrowed shape is validated too.
    error = only_error(
        h.send(
            {
                "type": "session.update",
                "event_id": "x",
                "session": {"audio": {"input": {"format": {"type": "mp3"}}}},
            }
        )
    )
    assert error["code"] == "invalid_session_update" and error["event_id"] == "x"
    assert error["param"].startswith("session.audio.input.format")


def test_ga_client_may_add_flat_beta_fields() -> None:
    h = Harness(Dialect.GA)
    (event,) = h.send(
        {"type": "session.update", "session": {"type": "realtime", "input_audio_format": "g711_ulaw"}}
    )
    assert event["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}


def test_ga_session_update_without_type_is_an_error() -> None:
    h = Harness(Dialect.GA)
    error = only_error(h.send({"type": "session.update", "event_id": "e9", "session": {"instructions": "x"}}))
    assert error["code"] == "invalid_session_update"
    assert error["param"] == "session.type" and error["event_id"] == "e9"
    assert "OpenAI-Beta" in error["message"]
    error = only_error(h.send({"type": "session.update", "session": {"type": "transcription"}}))
    assert error["code"] == "invalid_session_update"
    assert h.send({"type": "session.update", "session": {"type": "realtime"}})[0]["type"] == "session.updated"


def test_beta_transcription_session_update_is_refused() -> None:
    h = Harness(Dialect.BETA)
    error = only_error(h.send({"type": "transcription_session.update", "session": {}}))
    assert error["code"] == "invalid_session_update"


def test_voice_is_locked_once_audio_was_sent(h: Harness) -> None:
    voice_update = (
        {"type": "realtime", "audio": {"output": {"voice": "echo"}}}
        if h.dialect is Dialect.GA
        else {"voice": "echo"}
    )
    assert h.send({"type": "session.update", "session": voice_update})[0]["type"] == "session.updated"
    speak(h, "hi")
    again = (
        {"type": "realtime", "audio": {"output": {"voice": "echo"}}}
        if h.dialect is Dialect.GA
        else {"voice": "echo"}
    )
    assert (
        h.send({"type": "session.update", "session": again})[0]["type"] == "session.updated"
    )  # unchanged: fine
    other = (
        {"type": "realtime", "audio": {"output": {"voice": "sage"}}}
        if h.dialect is Dialect.GA
        else {"voice": "sage"}
    )
    error = only_error(h.send({"type": "session.update", "session": other}))
    assert error["code"] == "invalid_session_update" and "voice" in error["param"]


# Input audio buffer ------------------------------------------------------------------------------


def test_append_feeds_moshi_and_sends_nothing(h: Harness) -> None:
    samples = (np.arange(4800) % 200 - 100).astype(np.int16)
    assert h.send({"type": "input_audio_buffer.append", "audio": b64_pcm16(samples)}) == []
    (pcm,) = h.session.audio_for_engine()
    assert pcm.dtype == np.float32 and len(pcm) == 4800
    np.testing.assert_array_equal(np.rint(pcm * 32768).astype(np.int16), samples)
    assert h.session.audio_for_engine() == []  # drained
    assert h.session.input_audio_ms == 200


def test_commit_creates_a_user_item_and_chains_previous_ids(h: Harness) -> None:
    h.append(2400)  # 100 ms: just enough
    events = h.send({"type": "input_audio_buffer.commit", "event_id": "c1"})
    item_events = (
        ["conversation.item.added", "conversation.item.done"]
        if h.dialect is Dialect.GA
        else ["conversation.item.created"]
    )
    assert types_of(events) == ["input_audio_buffer.committed", *item_events]
    first = events[0]["item_id"]
    assert first.startswith("item_") and events[0]["previous_item_id"] is None
    for event in events[1:]:
        assert event["item"]["id"] == first and event["previous_item_id"] is None
        assert event["item"]["role"] == "user" and event["item"]["status"] == "completed"
        assert event["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    h.append(4800)
    events = h.send({"type": "input_audio_buffer.commit"})
    assert events[0]["previous_item_id"] == first
    assert h.session.conversation.ids == [first, events[0]["item_id"]]


@pytest.mark.parametrize("samples", [0, 2399])
def test_commit_of_less_than_100ms_is_refused(h: Harness, samples: int) -> None:
    if samples:
        h.append(samples)
    error = only_error(h.send({"type": "input_audio_buffer.commit", "event_id": "c2"}))
    assert error["code"] == "input_audio_buffer_commit_empty" and error["event_id"] == "c2"
    assert error["type"] == "invalid_request_error"
    expected_ms = f"{samples / 24:.2f}ms"
    assert error["message"] == (
        "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
        f"but buffer only has {expected_ms} of audio."
    )


def test_clear_empties_the_buffer(h: Harness) -> None:
    h.append(4800)
    assert types_of(h.send({"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]
    assert (
        only_error(h.send({"type": "input_audio_buffer.commit"}))["code"] == "input_audio_buffer_commit_empty"
    )
    assert len(h.session.audio_for_engine()) == 1  # Moshi heard it anyway


def test_g711_input_is_decoded_and_upsampled_for_moshi(h: Harness) -> None:
    update = (
        {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}
        if h.dialect is Dialect.GA
        else {"input_audio_format": "g711_ulaw"}
    )
    h.send({"type": "session.update", "session": update})
    h.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes([0xFF]) * 800).decode()})
    (pcm,) = h.session.audio_for_engine()
    assert len(pcm) == 2400  # 100 ms at 8 kHz -> 24 kHz
    assert np.all(pcm == 0)
    assert h.send({"type": "input_audio_buffer.commit"})[0]["type"] == "input_audio_buffer.committed"


# Conversation items -----------------------------------------------------------------------------


def user_text(text: str, item_id: str | None = None) -> dict:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return item | ({"id": item_id} if item_id else {})


def test_item_create_keeps_client_ids_and_honours_previous_item_id(h: Harness) -> None:
    pipecat_id = "0123456789abcdef0123456789abcdef"
    events = h.send({"type": "conversation.item.create", "item": user_text("one", pipecat_id)})
    announce = events[0]
    assert announce["type"] == (
        "conversation.item.added" if h.dialect is Dialect.GA else "conversation.item.created"
    )
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


# Responses from Moshi's utterances --------------------------------------------------------------


def test_full_response_lifecycle_from_engine_frames(h: Harness) -> None:
    h.append(2400)
    user_item = h.send({"type": "input_audio_buffer.commit"})[0]["item_id"]
    assert h.frames(4, speaking=False) == []  # no audio outside a response
    events = h.frame(speaking=True, text=" Hello")
    events += h.frame(speaking=True, text=None)
    events += h.frame(speaking=True, text=" world")
    events += h.frames(3, speaking=False)
    assert types_of(events) == response_lifecycle(
        h.dialect, deltas=["text", "audio", "audio", "text", "audio", "audio", "audio", "audio"]
    )
    response_id = events[0]["response"]["id"]
    item_id = events[1]["item"]["id"]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    assert events[0]["response"]["metadata"] is None  # Moshi spoke on its own
    assert events[2]["previous_item_id"] == user_item
    for event in events[1:-1]:
        assert event.get("response_id", response_id) == response_id
        assert event.get("item_id", item_id) == item_id
        assert event.get("output_index", 0) == 0 and event.get("content_index", 0) == 0
    deltas = [e["delta"] for e in events if e["type"].endswith("transcript.delta")]
    assert deltas == ["Hello", " world"]  # Moshi's leading word-boundary space is dropped once
    audio = [
        base64.b64decode(e["delta"])
        for e in events
        if e["type"] in ("response.output_audio.delta", "response.audio.delta")
    ]
    assert [len(chunk) for chunk in audio] == [
        FRAME_SAMPLES * 2
    ] * 6  # trailing silence belongs to the response
    assert np.frombuffer(audio[0], "<i2")[0] == round(0.1 * 32768)
    transcript_done = next(e for e in events if e["type"].endswith("transcript.done"))
    assert transcript_done["transcript"] == "Hello world"
    part_done = next(e for e in events if e["type"] == "response.content_part.done")
    assert part_done["part"] == {"type": "audio", "transcript": "Hello world"}
    item_done = next(e for e in events if e["type"] == "response.output_item.done")["item"]
    part_type = "output_audio" if h.dialect is Dialect.GA else "audio"
    assert item_done["status"] == "completed"
    assert item_done["content"] == [{"type": part_type, "transcript": "Hello world"}]
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["status_details"] is None
    assert done["output"] == [item_done]
    assert done["usage"] == {
        "total_tokens": 6 + 8,
        "input_tokens": 6,
        "output_tokens": 8,
        "input_token_details": {"text_tokens": 0, "audio_tokens": 6, "cached_tokens": 0},
        "output_token_details": {"text_tokens": 2, "audio_tokens": 6},
    }
    assert h.session.active_response_id is None
    assert h.frames(5, speaking=False) == []


def test_short_pauses_stay_inside_one_utterance(h: Harness) -> None:
    events = speak(h, "a", silence=2) + speak(h, "b", silence=3)
    assert types_of(events).count("response.created") == 1
    assert types_of(events).count("response.done") == 1
    assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == "ab"


def test_silence_boundary_splits_utterances_into_responses(h: Harness) -> None:
    events = speak(h, "one") + speak(h, " two")
    dones = [e for e in events if e["type"] == "response.done"]
    assert len(dones) == 2
    first, second = (d["response"] for d in dones)
    assert first["id"] != second["id"]
    assert first["output"][0]["content"][0]["transcript"] == "one"
    assert second["output"][0]["content"][0]["transcript"] == "two"
    announce = "conversation.item.added" if h.dialect is Dialect.GA else "conversation.item.created"
    announcements = [e for e in events if e["type"] == announce]
    assert announcements[1]["previous_item_id"] == announcements[0]["item"]["id"]


def test_max_utterance_ends_the_response_and_the_monologue_continues(h: Harness) -> None:
    events = h.frames(12, speaking=True, text="x")
    assert types_of(events).count("response.done") == 1
    first_done = next(e for e in events if e["type"] == "response.done")["response"]
    assert first_done["status"] == "incomplete"
    assert first_done["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert first_done["output"][0]["status"] == "incomplete"
    assert first_done["usage"]["output_token_details"] == {"text_tokens": 10, "audio_tokens": 10}
    # Frames 11 and 12 already opened the next response.
    assert types_of(events).count("response.created") == 2
    assert h.session.active_response_id is not None


def test_text_only_session_sends_text_and_no_audio(dialect: Dialect) -> None:
    h = Harness(dialect, FAST)
    update = (
        {"type": "realtime", "output_modalities": ["text"]}
        if dialect is Dialect.GA
        else {"modalities": ["text"]}
    )
    h.send({"type": "session.update", "session": update})
    events = speak(h, "hi", " you")
    text = "response.output_text" if dialect is Dialect.GA else "response.text"
    kinds = types_of(events)
    assert not any("audio" in kind for kind in kinds)
    assert kinds.count(f"{text}.delta") == 2 and f"{text}.done" in kinds
    assert next(e for e in events if e["type"] == f"{text}.done")["text"] == "hi you"
    part = next(e for e in events if e["type"] == "response.content_part.done")["part"]
    assert part == {"type": "text", "text": "hi you"}
    item = events[-1]["response"]["output"][0]
    assert item["content"] == [{"type": "output_text" if dialect is Dialect.GA else "text", "text": "hi you"}]


@pytest.mark.parametrize("fmt", ["ulaw", "alaw"])
def test_g711_output_is_downsampled_per_frame(dialect: Dialect, fmt: str) -> None:
    h = Harness(dialect, FAST)
    update = (
        {
            "type": "realtime",
            "audio": {"output": {"format": {"type": "audio/pcmu" if fmt == "ulaw" else "audio/pcma"}}},
        }
        if dialect is Dialect.GA
        else {"output_audio_format": f"g711_{fmt}"}
    )
    h.send({"type": "session.update", "session": update})
    events = speak(h, "hi")
    deltas = [e for e in events if e["type"] in ("response.output_audio.delta", "response.audio.delta")]
    assert [len(base64.b64decode(e["delta"])) for e in deltas] == [640] * 4  # 80 ms at 8 kHz, 1 byte each
    response = events[0]["response"]
    if dialect is Dialect.GA:
        assert response["audio"]["output"]["format"] == {"type": f"audio/pcm{fmt[0]}"}
    else:
        assert response["output_audio_format"] == f"g711_{fmt}"


# response.create ------------------------------------------------------------------------------


def test_response_create_binds_to_the_next_utterance_and_echoes_metadata(h: Harness) -> None:
    (created,) = h.send(
        {"type": "response.create", "event_id": "rc", "response": {"metadata": {"client_event_id": "rc"}}}
    )
    assert created["type"] == "response.created"
    response = created["response"]
    assert response["status"] == "in_progress" and response["metadata"] == {"client_event_id": "rc"}
    assert h.frames(2, speaking=False) == []
    events = speak(h, "sure")
    assert "response.created" not in types_of(events)
    assert all(e.get("response_id", response["id"]) == response["id"] for e in events)
    assert events[-1]["response"]["id"] == response["id"]
    assert events[-1]["response"]["metadata"] == {"client_event_id": "rc"}
    assert events[-1]["response"]["status"] == "completed"


def test_response_create_while_moshi_speaks_is_the_benign_error(h: Harness) -> None:
    events = h.frame(speaking=True, text="hi")
    error = only_error(h.send({"type": "response.create", "event_id": "rc2"}))
    assert error["code"] == "conversation_already_has_active_response" and error["event_id"] == "rc2"
    assert events[0]["response"]["id"] in error["message"]
    # A waiting response is active too.
    speak(h)
    h.send({"type": "response.create"})
    assert (
        only_error(h.send({"type": "response.create"}))["code"] == "conversation_already_has_active_response"
    )


def test_response_create_ends_empty_when_moshi_stays_silent_counted_in_frames(h: Harness) -> None:
    (created,) = h.send({"type": "response.create"})
    assert h.frames(4, speaking=False) == []
    (done,) = h.frame(speaking=False)  # 5 frames = 400 ms
    assert done["type"] == "response.done"
    response = done["response"]
    assert response["id"] == created["response"]["id"]
    assert (
        response["status"] == "completed" and response["output"] == [] and response["status_details"] is None
    )
    assert response["usage"]["output_tokens"] == 0
    # The next utterance gets a response of its own.
    assert speak(h, "late")[0]["type"] == "response.created"


def test_response_create_ends_empty_by_clock_when_audio_stops(h: Harness) -> None:
    h.clock(100.0)
    h.send({"type": "response.create"})
    assert h.clock(100.2) == []  # the deadline starts at the first tick that sees the response
    assert h.clock(100.5) == []
    (done,) = h.clock(100.61)
    assert done["type"] == "response.done" and done["response"]["output"] == []


def test_a_stalled_streaming_response_is_closed_by_clock(h: Harness) -> None:
    h.clock(10.0)
    h.frame(speaking=True, text="hi")
    assert h.clock(10.1) == []
    assert h.clock(11.0) == []
    events = h.clock(11.2)
    assert types_of(events)[-1] == "response.done"
    assert events[-1]["response"]["status"] == "incomplete"
    assert events[-1]["response"]["status_details"] == {"type": "incomplete"}
    # When frames resume, Moshi's speech opens a new response.
    assert h.frame(speaking=True, text="again")[0]["type"] == "response.created"


def test_response_create_options_override_session_defaults(dialect: Dialect) -> None:
    h = Harness(dialect, FAST)
    if dialect is Dialect.GA:
        params = {"output_modalities": ["text"], "metadata": {"k": "v"}, "max_output_tokens": 7}
    else:
        params = {
            "modalities": ["text"],
            "metadata": {"k": "v"},
            "max_response_output_tokens": 7,
            "temperature": 0.7,
        }
    (created,) = h.send({"type": "response.create", "response": params})
    response = created["response"]
    assert response[("output_modalities" if dialect is Dialect.GA else "modalities")] == ["text"]
    assert response["max_output_tokens"] == 7
    events = speak(h, "ok")
    assert not any("audio" in e["type"] for e in events)


# response.cancel ------------------------------------------------------------------------------


def test_cancel_stops_the_utterance_and_mutes_it_until_silence(h: Harness) -> None:
    events = h.frames(2, speaking=True, text="blah")
    response_id = events[0]["response"]["id"]
    events = h.send({"type": "response.cancel", "event_id": "cx"})
    audio = "response.output_audio" if h.dialect is Dialect.GA else "response.audio"
    transcript = (
        "response.output_audio_transcript" if h.dialect is Dialect.GA else "response.audio_transcript"
    )
    expected = [
        f"{audio}.done",
        f"{transcript}.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    expected += ["conversation.item.done"] if h.dialect is Dialect.GA else []
    assert types_of(events) == [*expected, "response.done"]
    done = events[-1]["response"]
    assert done["id"] == response_id and done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert done["output"][0]["status"] == "incomplete"
    # Moshi keeps talking in the model; none of it reaches the client until its utterance ends.
    assert h.frames(3, speaking=True, text="more") == []
    assert h.frames(3, speaking=False) == []
    assert h.frame(speaking=True, text="new")[0]["type"] == "response.created"


def test_cancel_a_waiting_response(h: Harness) -> None:
    (created,) = h.send({"type": "response.create"})
    (done,) = h.send({"type": "response.cancel", "response_id": created["response"]["id"]})
    assert done["response"]["status"] == "cancelled" and done["response"]["output"] == []


def test_cancel_without_active_response_is_the_benign_error(h: Harness) -> None:
    error = only_error(h.send({"type": "response.cancel", "event_id": "c0"}))
    assert error == {
        "type": "invalid_request_error",
        "code": "response_cancel_not_active",
        "message": "Cancellation failed: no active response found",
        "param": None,
        "event_id": "c0",
    }
    h.frame(speaking=True, text="hi")
    error = only_error(h.send({"type": "response.cancel", "response_id": "resp_other"}))
    assert error["code"] == "response_cancel_not_active"


def test_response_create_during_a_muted_utterance_waits_for_the_next_one(h: Harness) -> None:
    h.frame(speaking=True, text="a")
    h.send({"type": "response.cancel"})
    (created,) = h.send({"type": "response.create"})  # no response is active, so this is legal
    assert h.frame(speaking=True, text="muted") == []
    assert h.frames(3, speaking=False) == []  # the muted utterance ends (4 of 5 waiting frames used)
    events = h.frame(speaking=True, text="b")
    assert events[0]["type"] == "response.output_item.added"
    assert events[0]["response_id"] == created["response"]["id"]


# conversation.item.truncate ---------------------------------------------------------------------


def spoken_item(h: Harness, *pieces: str) -> str:
    events = speak(h, *pieces)
    return str(events[1]["item"]["id"])


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


# output_audio_buffer.clear ----------------------------------------------------------------------


def test_output_audio_buffer_clear_cancels_the_response(h: Harness) -> None:
    events = h.frame(speaking=True, text="hi")
    response_id = events[0]["response"]["id"]
    events = h.send({"type": "output_audio_buffer.clear", "event_id": "oc"})
    assert types_of(events)[-2:] == ["response.done", "output_audio_buffer.cleared"]
    assert events[-2]["response"]["status"] == "cancelled"
    assert events[-1]["response_id"] == response_id
    # Nothing active: acknowledged with the last response's id.
    (event,) = h.send({"type": "output_audio_buffer.clear"})
    assert event["type"] == "output_audio_buffer.cleared" and event["response_id"] == response_id


def test_output_audio_buffer_clear_before_any_response(h: Harness) -> None:
    error = only_error(h.send({"type": "output_audio_buffer.clear", "event_id": "oc"}))
    assert error["code"] == "response_cancel_not_active" and error["event_id"] == "oc"


# Malformed input --------------------------------------------------------------------------------


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


def test_odd_length_pcm16_names_the_problem(h: Harness) -> None:
    error = only_error(
        h.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()})
    )
    assert error["code"] == "invalid_audio" and "2-byte" in error["message"]
    assert h.session.audio_for_engine() == []


# Server-side failures, hooks, plumbing -----------------------------------------------------------


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


def test_vad_hooks_emit_speech_events_and_commit_under_one_item_id(h: Harness) -> None:
    h.append(4800)
    item_id = h.session.speech_started(audio_start_ms=20)
    (started,) = h.events()
    assert started == {
        **started,
        "type": "input_audio_buffer.speech_started",
        "audio_start_ms": 20,
        "item_id": item_id,
    }
    assert h.session.speech_stopped(audio_end_ms=180) == item_id
    events = h.events()
    assert types_of(events)[:2] == ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed"]
    assert {e.get("item_id", e.get("item", {}).get("id")) for e in events} == {item_id}


def test_engine_frames_must_be_one_mimi_frame(h: Harness) -> None:
    with pytest.raises(ValueError, match="1920"):
        h.session.receive_engine_frame(EngineFrame(np.zeros(10, np.float32), None, False))


def test_events_are_json_text_with_unique_event_ids() -> None:
    session = RealtimeSession(session_id="s", model_id="m", dialect=Dialect.GA, settings=FAST)
    session.connect()
    session.receive_client_text("nope")
    frames = session.data_to_send()
    assert all(isinstance(f, str) for f in frames)
    ids = [json.loads(f)["event_id"] for f in frames]
    assert len(set(ids)) == len(ids)
    assert session.data_to_send() == []


def test_settings_are_read_in_frames() -> None:
    h = Harness(Dialect.GA, SessionSettings(utterance_silence_ms=800))
    events = h.frame(speaking=True, text="x") + h.frames(9, speaking=False)
    assert "response.done" not in types_of(events)
    assert types_of(h.frame(speaking=False))[-1] == "response.done"


def test_ga_pcm_format_must_be_24khz_even_without_a_type() -> None:
    h = Harness(Dialect.GA)
    # The SDK's format members all have an optional `type`, so {"rate": 16000} passes the types.
    error = only_error(
        h.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"format": {"rate": 16000}}}},
            }
        )
    )
    assert error["code"] == "invalid_session_update" and error["param"] == "session.audio.output.format.rate"
    (event,) = h.send(
        {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"format": {}}}}}
    )
    assert event["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}


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
    h.send(
        {
            "type": "response.create",
            "response": {"output_modalities": ["text"]}
            if dialect is Dialect.GA
            else {"modalities": ["text"]},
        }
    )
    speak(h, "text")
    assert set(types_of(h.log)) == EMITTED[dialect]


def test_an_illegal_transition_caused_by_a_client_event_becomes_one_error(h: Harness) -> None:
    def illegal(event: object) -> None:
        raise StateError("clear the buffer", SessionState.OPEN, SessionState.CLOSED)

    h.session._handlers["input_audio_buffer.clear"] = illegal
    error = only_error(h.send({"type": "input_audio_buffer.clear", "event_id": "s1"}))
    assert error["code"] == "invalid_state" and error["event_id"] == "s1"
    assert error["message"] == "clear the buffer: expected state 'open', but it is 'closed'."


def test_input_faster_than_real_time_is_refused_past_the_backlog(dialect: Dialect) -> None:
    h = Harness(dialect, FAST.model_copy(update={"max_input_backlog_ms": 400}))  # 5 frames
    assert h.append(4 * FRAME_SAMPLES) == []
    error = only_error(
        h.send({"type": "input_audio_buffer.append", "event_id": "a9", "audio": b64_pcm16(3840)})
    )
    assert error["code"] == "input_audio_backlog_full" and error["event_id"] == "a9"
    assert "320ms are already waiting" in error["message"]
    assert len(h.session.audio_for_engine()) == 1  # the refused chunk never reached Moshi
    h.frames(2, speaking=False)  # Moshi stepped two frames: room for two more
    assert h.append(2 * FRAME_SAMPLES) == []
    assert only_error(h.append(FRAME_SAMPLES + 1))["code"] == "input_audio_backlog_full"
