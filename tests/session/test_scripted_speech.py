"""Scripted speech (scripted.py, turns.py): an assistant text item, then response.create, makes a response
that says exactly that text: Say(text) to the slot, the engine's scripted frames feed the response, and
`script_done` ends it. Every other ending asks the slot to StopSaying, and whatever the engine had already
forced stays off the wire."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from serve_app.constants import FRAME_SAMPLES
from serve_app.protocol.dialect import Dialect
from serve_app.session.engine_requests import Say, StopSaying

from .conftest import FAST
from .harness import Harness, only_error, speak, types_of

SCRIPT_SETTINGS = FAST.model_copy(update={"max_utterance_ms": 1600})
"""FAST's timings, with room for a 20-frame script."""


@pytest.fixture
def h(dialect: Dialect) -> Harness:
    return Harness(dialect, SCRIPT_SETTINGS)


GREETING = "hello there, this is a scripted greeting"
PIECES = ["hello", " there", ",", " this", " is", " a", " script", "ed", " greeting"]
"""GREETING as the engine reports it: each forced piece with the exact span of the script it says."""


def _script(h: Harness, text: str = GREETING) -> str:
    """Create the assistant item and the response that says it; returns the response id."""
    assert types_of(h.send(h.assistant_text(text))) == h.announce_types
    assert h.requests() == []  # nothing is said until a response asks for it
    (created,) = h.send({"type": "response.create"})
    assert h.requests() == [Say(text)]
    return str(created["response"]["id"])


def _transcript(h: Harness, events: list[dict[str, Any]]) -> list[str]:
    kinds = (h.name("response.output_audio_transcript.delta"), h.name("response.output_text.delta"))
    return [e["delta"] for e in events if e["type"] in kinds]


def _audio_deltas(h: Harness, events: list[dict[str, Any]]) -> int:
    return sum(e["type"] == h.name("response.output_audio.delta") for e in events)


def test_a_scripted_response_says_exactly_the_text(h: Harness) -> None:
    response_id = _script(h)
    # The engine's text lag: Moshi's own frames come first, and do not enter the response.
    assert h.frame(speaking=True, text=" own") == []
    pauses = [None, None]
    events = h.said(*pauses, *PIECES, None, done=True)
    assert (
        types_of(events)
        == h.response_lifecycle(["audio", "audio"] + ["text", "audio"] * len(PIECES) + ["audio"])[1:]
    )
    assert _transcript(h, events) == PIECES
    assert "".join(_transcript(h, events)) == GREETING
    assert all(e.get("response_id", response_id) == response_id for e in events)
    audio = [
        base64.b64decode(e["delta"]) for e in events if e["type"] == h.name("response.output_audio.delta")
    ]
    assert [len(chunk) for chunk in audio] == [2 * FRAME_SAMPLES] * (len(PIECES) + 3)  # every scripted frame
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["status_details"] is None
    assert done["output"][0]["content"][0]["transcript"] == GREETING
    assert h.requests() == []  # it ended with the script: nothing to stop


def test_the_text_is_kept_verbatim_even_with_a_leading_space(h: Harness) -> None:
    _script(h, " hi")
    events = h.said(" hi", done=True)
    assert _transcript(h, events) == [" hi"]  # Moshi's own leading space is dropped, a script's is not


def test_pending_items_are_joined_and_a_deleted_one_is_not_said(h: Harness) -> None:
    h.send(h.assistant_text("first.", item_id="client_1"))
    h.send(h.assistant_text("dropped.", item_id="client_2"))
    h.send(h.assistant_text("second."))
    h.send({"type": "conversation.item.delete", "item_id": "client_2"})
    h.send({"type": "response.create"})
    assert h.requests() == [Say("first. second.")]


def test_without_assistant_text_a_response_waits_for_moshi_as_before(h: Harness) -> None:
    h.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": []}})
    h.send({"type": "response.create"})
    assert h.requests() == []
    events = h.frame(speaking=True, text=" Hi")
    assert types_of(events)[0] == "response.output_item.added"
    assert _transcript(h, events) == ["Hi"]


def test_a_refused_create_keeps_the_text_for_the_next_one(h: Harness) -> None:
    h.frame(speaking=True, text=" busy")  # Moshi speaks: a response is active
    h.send(h.assistant_text(GREETING))
    assert (
        only_error(h.send({"type": "response.create"}))["code"] == "conversation_already_has_active_response"
    )
    assert h.requests() == []
    h.frames(3, speaking=False)
    h.send({"type": "response.create"})
    assert h.requests() == [Say(GREETING)]


def _stop_by(h: Harness, how: str, item_id: str) -> list[dict[str, Any]]:
    if how == "cancel":
        return h.send({"type": "response.cancel"})
    if how == "clear":
        return h.send({"type": "output_audio_buffer.clear"})
    if how == "truncate":
        return h.send(
            {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 80}
        )
    h.session.speech_started(0)  # barge-in (interrupt_response is on by default)
    return h.events()


REASONS = {"cancel": "client_cancelled", "clear": "client_cancelled", "truncate": "client_cancelled"}


@pytest.mark.parametrize("how", ["cancel", "clear", "truncate", "barge_in"])
def test_stopping_a_scripted_response_stops_the_script(h: Harness, how: str) -> None:
    response_id = _script(h)
    events = h.said(None, *PIECES[:3])
    item_id = events[0]["item"]["id"]
    events = _stop_by(h, how, item_id)
    (done,) = [e["response"] for e in events if e["type"] == "response.done"]
    assert done["id"] == response_id and done["status"] == "cancelled"
    assert done["status_details"]["reason"] == REASONS.get(how, "turn_detected")
    assert h.requests() == [StopSaying()]
    # What the engine forced before it heard the stop is still on its way: none of it is sent.
    assert h.said(*PIECES[3:], done=True) == []
    assert h.session.active_response_id is None
    said = "".join(_transcript(h, h.log))
    assert GREETING.startswith(said) and said != GREETING


def test_after_a_stop_the_next_script_is_said_whole(h: Harness) -> None:
    _script(h, "first script")
    h.said("first")
    h.send({"type": "response.cancel"})
    assert h.requests() == [StopSaying()]
    response_id = _script(h, "second one")
    # Leftovers of the first script, then the lag's unscripted frame, then the second script.
    assert h.said(" script", done=True) == []
    assert h.frame(speaking=False) == []
    events = h.said("second", " one", done=True)
    assert _transcript(h, events) == ["second", " one"]
    assert events[-1]["response"]["id"] == response_id and events[-1]["response"]["status"] == "completed"


def test_moshis_own_speech_stays_out_of_a_scripted_response(h: Harness) -> None:
    _script(h, "scripted")
    assert h.frames(2, speaking=True, text=" own") == []  # Moshi speaks on its own: muted, no response
    events = h.said("scripted", None, done=True)
    assert _transcript(h, events) == ["scripted"]
    # Moshi's own utterance goes on muted until its silence; its next one is a response as usual.
    assert h.frames(2, speaking=True, text=" more") == []
    assert h.frames(3, speaking=False) == []
    events = speak(h, " next")
    assert _transcript(h, events) == ["next"] and types_of(events)[0] == "response.created"


def test_a_script_that_never_starts_ends_incomplete_and_is_stopped(h: Harness) -> None:
    _script(h)
    events = h.frames(5, speaking=False)  # FAST waits 5 frames
    (done,) = [e["response"] for e in events if e["type"] == "response.done"]
    assert done["status"] == "incomplete" and done["output"] == []
    assert h.requests() == [StopSaying()]


def test_a_script_that_never_starts_ends_by_clock_too(h: Harness) -> None:
    _script(h)
    events = h.clock(1.0) + h.clock(1.5)
    assert [e["response"]["status"] for e in events if e["type"] == "response.done"] == ["incomplete"]
    assert h.requests() == [StopSaying()]


def test_a_script_longer_than_max_utterance_is_cut_like_a_monologue(h: Harness) -> None:
    _script(h, "x" * 40)
    assert h.said(*["x"] * 19)[-1]["type"] != "response.done"
    events = h.said("x")  # the 20-frame cap
    done = events[-1]["response"]
    assert done["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert h.requests() == [StopSaying()]


def test_a_text_only_scripted_response_sends_text_and_no_audio(h: Harness) -> None:
    h.send(h.assistant_text("quiet words"))
    h.send({"type": "response.create", "response": h.response_params(text_only=True)})
    events = h.said("quiet", None, " words", done=True)
    assert _transcript(h, events) == ["quiet", " words"]
    assert _audio_deltas(h, events) == 0


def test_a_session_that_fails_mid_script_stops_it(h: Harness) -> None:
    _script(h)
    h.said(*PIECES[:2])
    h.session.fail("session_lost")
    done = [e["response"] for e in h.events() if e["type"] == "response.done"]
    assert [d["status"] for d in done] == ["failed"]
    assert h.requests() == [StopSaying()]


def test_a_stopped_script_that_passes_the_stale_check_still_says_nothing_of_its_own(h: Harness) -> None:
    """The cancel overtook the first script's start: its lag frame clears the stop, so its frames pass for
    the next script's. Its pieces do not continue the next script's text and its end does not end it."""
    _script(h, "first words")
    h.send({"type": "response.cancel"})
    assert h.requests() == [StopSaying()]
    response_id = _script(h, "second")
    assert h.frame(speaking=False) == []  # the first script's lag frame
    strays = h.said("first", None, " words", None, done=True)
    assert _transcript(h, strays) == [] and "response.done" not in types_of(strays)
    events = h.frame(speaking=False) + h.said("second", None, done=True)
    assert _transcript(h, events) == ["second"]
    done = events[-1]["response"]
    assert done["id"] == response_id and done["status"] == "completed"
    assert done["output"][0]["content"][0]["transcript"] == "second"
