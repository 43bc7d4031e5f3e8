from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.port import EngineFrame
from serve_app.protocol.codecs import AudioFormat
from serve_app.protocol.dialect import Dialect
from serve_app.session.config import ResponseOptions
from serve_app.session.conversation import AssistantItem
from serve_app.session.outbox import Outbox
from serve_app.session.response import Deadlines, Response
from serve_app.session.settings import SessionSettings
from serve_app.session.state import ResponseState, StateError

from .harness import strict_check


def make(dialect: Dialect, deadlines: Deadlines | None = None) -> tuple[Response, Outbox]:
    outbox = Outbox(dialect)
    options = ResponseOptions(
        conversation_id="conv_1",
        audio_output=True,
        output_format=AudioFormat.PCM16,
        voice="alloy",
        temperature=0.8,
        max_output_tokens="inf",
        metadata={"k": "v"},
    )
    deadlines = deadlines or Deadlines.from_settings(SessionSettings())
    response = Response(
        response_id="resp_1", dialect=dialect, options=options, deadlines=deadlines, emit=outbox.emit
    )
    return response, outbox


def drained(dialect: Dialect, outbox: Outbox) -> list[dict[str, Any]]:
    return [strict_check(dialect, event.text) for event in outbox.drain()]


@pytest.mark.parametrize("dialect", list(Dialect))
def test_illegal_transitions_raise_naming_the_state(dialect: Dialect) -> None:
    response, outbox = make(dialect)
    frame = EngineFrame(np.zeros(FRAME_SAMPLES, np.float32), "x", True)
    with pytest.raises(StateError, match="expected state 'streaming', but it is 'waiting'"):
        response.add_frame(frame)
    response.announce()
    response.open_item(AssistantItem(id="item_1", audio_output=True), None)
    with pytest.raises(StateError, match="expected state 'waiting'"):
        response.open_item(AssistantItem(id="item_2", audio_output=True), None)
    response.add_frame(frame)
    response.finish("completed")
    assert response.state is ResponseState.DONE
    with pytest.raises(StateError, match="but it is 'done'"):
        response.finish("cancelled")
    events = drained(dialect, outbox)
    assert events[-1]["response"]["metadata"] == {"k": "v"}
    assert events[-1]["response"]["usage"]["output_tokens"] == 2


def test_a_waiting_response_expires_by_frames_or_by_clock_whichever_first() -> None:
    deadlines = Deadlines(wait_frames=3, wait_ms=400, stall_ms=1000)
    by_frames, _ = make(Dialect.GA, deadlines)
    assert [by_frames.on_frame() for _ in range(3)] == [False, False, True]
    by_clock, _ = make(Dialect.GA, deadlines)
    assert by_clock.on_clock(10.0) is False  # the first tick that sees it starts the deadline
    assert by_clock.on_frame() is False
    assert by_clock.on_clock(10.39) is False
    assert by_clock.on_clock(10.4) is True


def test_a_streaming_response_stalls_only_without_frames_between_ticks() -> None:
    response, _ = make(Dialect.GA, Deadlines(wait_frames=3, wait_ms=400, stall_ms=1000))
    response.open_item(AssistantItem(id="item_1", audio_output=True), None)
    assert response.on_clock(0.0) is False
    assert response.on_frame() is False  # streaming: frames do not count down a wait
    assert response.on_clock(5.0) is False  # a frame since the last tick: the stall clock restarts
    assert response.on_clock(5.9) is False
    assert response.on_clock(6.0) is True
