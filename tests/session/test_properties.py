"""Property tests: random interleavings of engine frames, clock ticks and client events, in both dialects.

The checker sees only what a client sees (the event stream, strict-validated by the harness) and holds
the session to the protocol's promises after every step: responses open and close in pairs, nothing of a
response flows outside it, ids are consistent, cancel/create answer according to what the client has
seen, and every malformed client event gets exactly one error echoing its event_id. The operations and
the client's view are in client_model.py, the driver that checks each step in driver.py. Assistant text
items make scripted responses, said by a model of the engine's scripted speech (client_model.py's
ScriptingSlot) with its requests' delays, so cancels, truncates, barge-ins, deadlines and stale frames of
stopped scripts interleave with Moshi's own speech too.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_app.protocol.dialect import Dialect
from serve_app.session.settings import SessionSettings

from .client_model import Op, ops, scripted_ops
from .conftest import FAST
from .driver import Driver
from .harness import Harness, only_error, types_of

PROFILE = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SETTINGS = [
    FAST,  # silence 3 frames, wait 5 frames, max 10 frames, stall 1 s
    SessionSettings(
        utterance_silence_ms=160, response_wait_ms=160, max_utterance_ms=240, response_stall_ms=240
    ),
    SessionSettings(utterance_silence_ms=80, response_wait_ms=80, max_utterance_ms=80, response_stall_ms=80),
    # Room for whole scripts (the longest is 10 frames) and for their requests' delays.
    FAST.model_copy(update={"response_wait_ms": 800, "max_utterance_ms": 2000}),
]


@PROFILE
@given(
    dialect=st.sampled_from([Dialect.GA, Dialect.BETA]),
    session_settings=st.sampled_from(SETTINGS),
    steps=st.lists(ops, min_size=8, max_size=40),
    ending=st.sampled_from(["silence", "clock", "fail"]),
    engine_delay=st.sampled_from([0, 1, 2, 3]),
    lag=st.sampled_from([1, 2]),
)
def test_random_interleavings_keep_the_protocol_promises(
    dialect: Dialect,
    session_settings: SessionSettings,
    steps: list[Op],
    ending: str,
    engine_delay: int,
    lag: int,
) -> None:
    """`engine_delay`: frames before an engine request takes effect; `lag`: the engine's text lag (scripted
    speech starts that many frames after it took effect)."""
    driver = Driver(dialect, session_settings, engine_delay=engine_delay, lag=lag)
    for op in steps:
        driver.run(op)
    driver.settle(ending)


@PROFILE
@given(
    dialect=st.sampled_from([Dialect.GA, Dialect.BETA]),
    session_settings=st.sampled_from(SETTINGS),
    steps=st.lists(scripted_ops, min_size=8, max_size=40),
    ending=st.sampled_from(["silence", "clock", "fail"]),
    engine_delay=st.sampled_from([0, 1, 2, 3]),
    lag=st.sampled_from([1, 2]),
)
def test_scripted_speech_among_moshis_own_keeps_the_protocol_promises(
    dialect: Dialect,
    session_settings: SessionSettings,
    steps: list[Op],
    ending: str,
    engine_delay: int,
    lag: int,
) -> None:
    """The same promises with scripts asked for often and frames enough to say them (most run to their
    end, or are cut by a cancel, a truncate, a barge-in or the length cap)."""
    driver = Driver(dialect, session_settings, engine_delay=engine_delay, lag=lag)
    for op in steps:
        driver.run(op)
    driver.settle(ending)


# The cancel race, deterministically --------------------------------------------------------------
#
# A client that saw response.created, output_item.added and audio sends response.cancel; before the
# session reads it, the response ends on its own. The cancel then finds no active response and is
# answered response_cancel_not_active, but the stream the client reads already holds the response's
# response.done, ahead of the error, for every way a response can end without the client.


def _open_streaming_response(h: Harness) -> str:
    events = h.frames(2, speaking=True, text=" hi")
    assert types_of(events)[:2] == ["response.created", "response.output_item.added"]
    assert h.name("response.output_audio.delta") in types_of(events)
    return str(events[0]["response"]["id"])


def _end_by_silence(h: Harness) -> list[dict[str, Any]]:
    return h.frames(3, speaking=False)


def _end_by_max_length(h: Harness) -> list[dict[str, Any]]:
    return h.frames(8, speaking=True, text="x")  # frames 3..10 of FAST's 10-frame cap


def _end_by_stall(h: Harness) -> list[dict[str, Any]]:
    return h.clock(10.0) + h.clock(11.1)  # no engine frame for more than response_stall_ms


ENDINGS = {"silence": _end_by_silence, "max_length": _end_by_max_length, "stall": _end_by_stall}


@pytest.mark.parametrize("ending", list(ENDINGS))
@pytest.mark.parametrize("named", [False, True], ids=["no_id", "with_id"])
def test_a_cancel_that_loses_the_race_finds_the_response_done_already_sent(
    h: Harness, ending: str, named: bool
) -> None:
    response_id = _open_streaming_response(h)
    ended = ENDINGS[ending](h)
    done = [e for e in ended if e["type"] == "response.done"]
    assert [e["response"]["id"] for e in done][:1] == [response_id]
    cancel: dict[str, Any] = {"type": "response.cancel", "event_id": "late"}
    if named:
        cancel["response_id"] = response_id
    error = only_error(h.send(cancel))
    assert (error["code"], error["event_id"]) == ("response_cancel_not_active", "late")
    # What the client read, in order: its response opened, streamed, ended, and only then the error.
    kinds = [(e["type"], e.get("response", {}).get("id")) for e in h.log]
    assert kinds.index(("response.done", response_id)) < len(kinds) - 1
    assert [k for k, rid in kinds if rid == response_id] == ["response.created", "response.done"]


@pytest.mark.parametrize("by", ["frames", "clock"])
def test_a_cancel_that_loses_the_race_with_an_unanswered_create(h: Harness, by: str) -> None:
    (created,) = h.send({"type": "response.create"})
    response_id = created["response"]["id"]
    ended = h.frames(5, speaking=False) if by == "frames" else h.clock(1.0) + h.clock(1.5)
    assert [e["response"]["id"] for e in ended if e["type"] == "response.done"] == [response_id]
    error = only_error(h.send({"type": "response.cancel", "response_id": response_id}))
    assert error["code"] == "response_cancel_not_active"


def test_a_cancel_of_a_response_bound_while_a_cancelled_utterance_went_on(h: Harness) -> None:
    """Cancel R1 mid-utterance (muted), create R2 during the muted rest, Moshi's next utterance binds
    R2: R2 is active for the session exactly as long as the client sees it open."""
    h.frame(speaking=True, text="a")
    h.send({"type": "response.cancel"})
    (created,) = h.send({"type": "response.create"})
    r2 = created["response"]["id"]
    assert h.frame(speaking=True, text="muted") == []
    assert h.session.active_response_id == r2
    assert h.frames(3, speaking=False) == []  # the muted utterance ends; R2 used 4 of its 5 frames
    events = h.frame(speaking=True, text="b")
    assert types_of(events)[0] == "response.output_item.added" and events[0]["response_id"] == r2
    events = h.send({"type": "response.cancel", "response_id": r2})
    assert types_of(events)[-1] == "response.done" and events[-1]["response"]["status"] == "cancelled"
