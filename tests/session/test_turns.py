"""Turn-taking through the session: Moshi's frames become utterances, each utterance one response;
response.create waits for the next one; deadlines, cancel (and the muted rest of the utterance),
output_audio_buffer.clear. Barge-in is in test_vad_hooks.py, the cancel races in test_properties.py."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from serve_app.constants import FRAME_SAMPLES
from serve_app.session.state import StateError
from serve_app.session.utterance import Utterance

from .harness import Harness, only_error, speak, types_of


def test_full_response_lifecycle_from_engine_frames(h: Harness) -> None:
    h.append(2400)
    user_item = h.send({"type": "input_audio_buffer.commit"})[0]["item_id"]
    assert h.frames(4, speaking=False) == []  # no audio outside a response
    events = h.frame(speaking=True, text=" Hello")
    events += h.frame(speaking=True, text=None)
    events += h.frame(speaking=True, text=" world")
    events += h.frames(3, speaking=False)
    assert types_of(events) == h.response_lifecycle(
        ["text", "audio", "audio", "text", "audio", "audio", "audio", "audio"]
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
        base64.b64decode(e["delta"]) for e in events if e["type"] == h.name("response.output_audio.delta")
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
    part_type = h.pick(ga="output_audio", beta="audio")
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
    announcements = [e for e in events if e["type"] == h.announce_types[0]]
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


def test_text_only_session_sends_text_and_no_audio(h: Harness) -> None:
    h.update_session(text_only=True)
    events = speak(h, "hi", " you")
    delta, done = h.name("response.output_text.delta"), h.name("response.output_text.done")
    kinds = types_of(events)
    assert not any("audio" in kind for kind in kinds)
    assert kinds.count(delta) == 2 and done in kinds
    assert next(e for e in events if e["type"] == done)["text"] == "hi you"
    part = next(e for e in events if e["type"] == "response.content_part.done")["part"]
    assert part == {"type": "text", "text": "hi you"}
    item = events[-1]["response"]["output"][0]
    assert item["content"] == [{"type": h.pick(ga="output_text", beta="text"), "text": "hi you"}]


@pytest.mark.parametrize("fmt", ["ulaw", "alaw"])
def test_g711_output_is_downsampled_per_frame(h: Harness, fmt: str) -> None:
    h.update_session(output_format=f"g711_{fmt}")
    events = speak(h, "hi")
    deltas = [e for e in events if e["type"] == h.name("response.output_audio.delta")]
    assert [len(base64.b64decode(e["delta"])) for e in deltas] == [640] * 4  # 80 ms at 8 kHz, 1 byte each
    assert (
        h.view(events[0]["response"])["output_format"] == f"g711_{fmt}"
    )  # GA: exactly {"type": "audio/pcmu"}


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


def test_response_create_options_override_session_defaults(h: Harness) -> None:
    params = h.response_params(text_only=True, max_tokens=7) | {"metadata": {"k": "v"}}
    params |= h.pick(ga={}, beta={"temperature": 0.7})
    (created,) = h.send({"type": "response.create", "response": params})
    response = created["response"]
    assert h.view(response)["text_only"] and response["metadata"] == {"k": "v"}
    assert response["max_output_tokens"] == 7
    assert response.get("temperature") == h.pick(ga=None, beta=0.7)
    events = speak(h, "ok")
    assert not any("audio" in e["type"] for e in events)


def test_cancel_stops_the_utterance_and_mutes_it_until_silence(h: Harness) -> None:
    events = h.frames(2, speaking=True, text="blah")
    response_id = events[0]["response"]["id"]
    events = h.send({"type": "response.cancel", "event_id": "cx"})
    expected = [
        h.name("response.output_audio.done"),
        h.name("response.output_audio_transcript.done"),
        "response.content_part.done",
        "response.output_item.done",
        *h.item_done_types,
    ]
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


def test_a_frame_for_an_unmuted_utterance_without_its_response_names_the_actual_state(h: Harness) -> None:
    """A broken invariant (an utterance flowing while its response only waits) says which state it
    found, not always 'done'."""
    h.send({"type": "response.create"})
    h.session._turns._utterance = Utterance(silence_frames=3, max_frames=10)
    with pytest.raises(StateError, match="expected state 'streaming', but it is 'waiting'"):
        h.frame(speaking=True, text="x")


def test_a_response_create_may_ask_for_a_custom_voice(h: Harness) -> None:
    """GA's response.create may name a custom voice object {id}; the response echoes its id."""
    voice = h.pick(ga={"audio": {"output": {"voice": {"id": "voice_1"}}}}, beta={"voice": "voice_1"})
    (created,) = h.send({"type": "response.create", "response": voice})
    assert h.view(created["response"])["voice"] == "voice_1"
