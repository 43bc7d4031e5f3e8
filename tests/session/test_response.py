from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.port import EngineFrame
from serve_app.protocol.codecs import AudioFormat
from serve_app.protocol.dialect import Dialect
from serve_app.session.conversation import AssistantItem
from serve_app.session.outbox import Outbox
from serve_app.session.response import Response, ResponseOptions
from serve_app.session.state import ResponseState, StateError

from .harness import strict_check


def make(dialect: Dialect) -> tuple[Response, Outbox]:
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
    return Response(response_id="resp_1", dialect=dialect, options=options, emit=outbox.emit), outbox


def drained(dialect: Dialect, outbox: Outbox) -> list[dict[str, Any]]:
    return [strict_check(dialect, text) for text in outbox.drain()]


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
