from __future__ import annotations

import json

import pytest

from serve_app.protocol.dialect import Dialect
from serve_app.protocol.server_events import ServerEventInvalid
from serve_app.session.outbox import Outbox

DELTA = {
    "type": "response.output_audio.delta",
    "response_id": "r",
    "item_id": "i",
    "output_index": 0,
    "content_index": 0,
    "delta": "",
}


def test_names_ids_and_draining() -> None:
    for dialect, name in (
        (Dialect.GA, "response.output_audio.delta"),
        (Dialect.BETA, "response.audio.delta"),
    ):
        outbox = Outbox(dialect)
        outbox.emit(DELTA)
        outbox.emit(DELTA)
        first, second = (json.loads(event.text) for event in outbox.drain())
        assert first["type"] == name and first["event_id"] != second["event_id"]
        assert outbox.drain() == []


def test_invalid_events_never_reach_the_queue() -> None:
    outbox = Outbox(Dialect.GA)
    with pytest.raises(ServerEventInvalid):
        outbox.emit({**DELTA, "output_index": None})
    assert outbox.drain() == []


@pytest.mark.parametrize("dialect", [Dialect.GA, Dialect.BETA])
def test_events_carry_their_ga_kind_and_error_code(dialect: Dialect) -> None:
    outbox = Outbox(dialect)
    outbox.emit(DELTA)
    error_body = {"type": "invalid_request_error", "code": "x_code", "message": "m"}
    outbox.emit({"type": "error", "error": error_body})
    delta, error = outbox.drain()
    assert (delta.kind, delta.error_code) == ("response.output_audio.delta", None)
    assert (error.kind, error.error_code) == ("error", "x_code")
    assert json.loads(error.text)["error"]["code"] == "x_code"
    assert outbox.drain() == []
