"""Delegation (delegation.py): a delegate's answer to a user turn or a response.create becomes the Realtime
function-calling flow, or words Moshi says (a scripted response); a failure becomes a named error and the
session goes on, with no response left open."""

from __future__ import annotations

import json
from typing import Any

import pytest

from serve_app.delegate.config import DelegateConfig
from serve_app.delegate.messages import DelegateReply, ToolCall
from serve_app.protocol.dialect import Dialect
from serve_app.session.engine_requests import Say

from .conftest import FAST
from .harness import Harness, speak, types_of

DELEGATE = DelegateConfig(base_url="http://127.0.0.1:9/v1", model="test", floor_wait_ms=500)
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather", "parameters": {}}
CALL = ToolCall(call_id="call_1", name="get_weather", arguments='{"city": "Paris"}')


@pytest.fixture
def h(dialect: Dialect) -> Harness:
    return Harness(dialect, FAST, delegate=DELEGATE)


def _tools(h: Harness, choice: Any = "auto") -> None:
    session: dict[str, Any] = {"tools": [WEATHER], "tool_choice": choice, "instructions": "Be brief."}
    if h.ga:
        session["type"] = "realtime"
    h.send({"type": "session.update", "session": session})


def _user_turn(h: Harness, transcript: str = "weather in Paris?") -> str:
    """A server VAD turn, committed and transcribed; returns its item id."""
    h.update_input(turn_detection={"type": "server_vad"})
    item_id = h.session.speech_started(0)
    h.session.speech_stopped(800)
    (request,) = h.session.transcription_requests()  # every turn is transcribed for the delegate
    h.session.input_transcription_completed(request.item_id, transcript)
    h.events()
    assert request.item_id == item_id
    return item_id


def _function_call_flow(h: Harness) -> list[str]:
    return [
        "response.created",
        "response.output_item.added",
        h.announce_types[0],
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        *h.item_done_types,
        "response.done",
    ]


def test_a_user_turn_asks_the_delegate_with_the_conversation(h: Harness) -> None:
    _tools(h)
    _user_turn(h)
    (ask,) = h.session.delegate_asks()
    assert ask.trigger == "user_turn"
    assert ask.instructions == "Be brief."
    assert [tool["name"] for tool in ask.tools] == ["get_weather"]
    (item,) = ask.items
    assert item["role"] == "user" and item["content"][0]["transcript"] == "weather in Paris?"
    assert h.session.delegate_asks() == []  # drained


def test_a_tool_call_answer_is_the_function_calling_flow(h: Harness) -> None:
    _tools(h)
    _user_turn(h)
    (ask,) = h.session.delegate_asks()
    h.session.delegate_replied(ask.ask_id, DelegateReply(text="", calls=(CALL,)), now_s=10.0)
    events = h.events()
    assert types_of(events) == _function_call_flow(h)
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert done["call_id"] == "call_1" and json.loads(done["arguments"]) == {"city": "Paris"}
    if h.ga:
        assert done["name"] == "get_weather"
    (output,) = events[-1]["response"]["output"]
    assert output["type"] == "function_call" and output["name"] == "get_weather"
    assert events[-1]["response"]["status"] == "completed"
    assert h.session.active_response_id is None


def test_several_calls_in_one_reply_are_one_response(h: Harness) -> None:
    _tools(h)
    _user_turn(h)
    (ask,) = h.session.delegate_asks()
    second = ToolCall(call_id="call_2", name="get_weather", arguments='{"city": "Rome"}')
    h.session.delegate_replied(ask.ask_id, DelegateReply(text="", calls=(CALL, second)), now_s=10.0)
    events = h.events()
    assert types_of(events).count("response.created") == 1
    assert types_of(events).count("response.done") == 1
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.done"] == [0, 1]
    assert [o["call_id"] for o in events[-1]["response"]["output"]] == ["call_1", "call_2"]


def test_function_output_then_response_create_is_answered_in_moshis_voice(h: Harness) -> None:
    _tools(h)
    _user_turn(h)
    (ask,) = h.session.delegate_asks()
    h.session.delegate_replied(ask.ask_id, DelegateReply(text="", calls=(CALL,)), now_s=10.0)
    h.events()
    output = {"type": "function_call_output", "call_id": "call_1", "output": '{"temp": 21}'}
    assert types_of(h.send({"type": "conversation.item.create", "item": output})) == h.announce_types
    assert h.session.delegate_asks() == []  # an output alone asks nothing
    (created,) = h.send({"type": "response.create"})
    assert created["type"] == "response.created"
    (ask,) = h.session.delegate_asks()
    assert ask.trigger == "response_create"
    assert [item["type"] for item in ask.items][-2:] == ["function_call", "function_call_output"]
    # While it waits, Moshi's own words stay off the wire (the response owns the turn).
    assert speak(h, " own", silence=1) == []
    h.session.delegate_replied(ask.ask_id, DelegateReply(text="It is 21 degrees.", calls=()), now_s=11.0)
    assert h.events() == []
    assert h.requests() == [Say("It is 21 degrees.")]
    events = h.said(None, "It", " is", " 21", " degrees.", done=True)
    assert types_of(events)[-1] == "response.done"
    assert events[-1]["response"]["id"] == created["response"]["id"]
    assert events[-1]["response"]["status"] == "completed"
    transcript = next(e for e in events if e["type"] == h.name("response.output_audio_transcript.done"))
    assert transcript["transcript"] == "It is 21 degrees."


@pytest.mark.parametrize("code", ["delegate_timeout", "delegate_failed", "delegate_invalid_reply"])
def test_a_failed_delegate_is_a_named_error_and_no_response_is_left_open(h: Harness, code: str) -> None:
    _tools(h)
    (created,) = h.send({"type": "response.create", "event_id": "evt_client"})
    (ask,) = h.session.delegate_asks()
    h.session.delegate_failed(ask.ask_id, code, "what went wrong")
    error, done = h.events()
    assert error["type"] == "error" and error["error"]["code"] == code
    assert error["error"]["event_id"] is None  # nothing the client sent was wrong
    assert done["type"] == "response.done" and done["response"]["id"] == created["response"]["id"]
    assert done["response"]["status"] == "failed"
    assert done["response"]["status_details"]["error"]["code"] == code
    assert h.session.active_response_id is None
    # The session goes on: Moshi's next utterance is a response as ever.
    assert types_of(speak(h, " hi"))[0] == "response.created"


def test_a_user_turns_failure_is_an_error_alone(h: Harness) -> None:
    _user_turn(h)
    (ask,) = h.session.delegate_asks()
    h.session.delegate_failed(ask.ask_id, "delegate_timeout", "late")
    assert types_of(h.events()) == ["error"]
    assert h.session.active_response_id is None


def test_an_answer_waits_for_moshi_to_pause_then_takes_the_floor(h: Harness) -> None:
    _user_turn(h)
    (ask,) = h.session.delegate_asks()
    h.frame(speaking=True, text=" Moshi")  # Moshi's own response streams
    moshi = h.session.active_response_id
    assert moshi is not None
    h.session.delegate_replied(ask.ask_id, DelegateReply(text="Sure.", calls=()), now_s=20.0)
    assert h.events() == [] and h.requests() == []
    h.frame(speaking=True, text=" goes")
    assert h.clock(20.3) == [] and h.requests() == []  # within floor_wait_ms: it waits
    events = h.clock(20.6)
    assert types_of(events)[-2:] == ["response.done", "response.created"]
    assert events[-2]["response"]["id"] == moshi and events[-2]["response"]["status"] == "cancelled"
    assert h.requests() == [Say("Sure.")]


def test_an_answer_starts_at_once_when_moshi_is_quiet_and_newer_turns_win(h: Harness) -> None:
    _user_turn(h, "first")
    (first,) = h.session.delegate_asks()
    _user_turn(h, "second")
    (second,) = h.session.delegate_asks()
    h.session.delegate_replied(first.ask_id, DelegateReply(text="Old.", calls=()), now_s=5.0)
    assert h.events() == [] and h.requests() == []  # superseded
    h.session.delegate_replied(second.ask_id, DelegateReply(text="New.", calls=()), now_s=5.1)
    assert types_of(h.events()) == ["response.created"]
    assert h.requests() == [Say("New.")]


def test_the_user_speaking_again_drops_an_answer_that_has_not_started(h: Harness) -> None:
    _user_turn(h)
    (ask,) = h.session.delegate_asks()
    h.frame(speaking=True, text=" Moshi")
    h.session.delegate_replied(ask.ask_id, DelegateReply(text="Late.", calls=()), now_s=1.0)
    h.session.speech_started(2000)
    h.events()
    h.clock(5.0)
    assert h.requests() == []


def test_create_response_false_asks_nothing_until_the_client_does(h: Harness) -> None:
    h.update_input(turn_detection={"type": "server_vad", "create_response": False})
    h.session.speech_started(0)
    h.session.speech_stopped(800)
    (request,) = h.session.transcription_requests()
    h.session.input_transcription_completed(request.item_id, "hi")
    assert h.session.delegate_asks() == []


def test_a_cancelled_waiting_response_drops_its_answer(h: Harness) -> None:
    h.send({"type": "response.create"})
    (ask,) = h.session.delegate_asks()
    done = h.send({"type": "response.cancel"})
    assert done[-1]["response"]["status"] == "cancelled"
    h.session.delegate_replied(ask.ask_id, DelegateReply(text="Too late.", calls=()), now_s=1.0)
    assert h.events() == [] and h.requests() == []


def test_assistant_text_is_still_said_verbatim_with_a_delegate(h: Harness) -> None:
    h.send(h.assistant_text("Hello."))
    h.send({"type": "response.create"})
    assert h.session.delegate_asks() == []
    assert h.requests() == [Say("Hello.")]


def test_without_a_delegate_nothing_is_asked(dialect: Dialect) -> None:
    h = Harness(dialect, FAST)
    _tools(h)
    h.update_input(turn_detection={"type": "server_vad"})
    h.session.speech_started(0)
    h.session.speech_stopped(800)
    assert h.session.transcription_requests() == []  # transcription stays the client's choice
    assert "response.created" in types_of(h.send({"type": "response.create"}))
    assert h.session.delegate_asks() == []
    assert h.session.active_response_id is not None  # it waits for Moshi's utterance, as ever
