from __future__ import annotations

import json

import pytest

from serve_app.protocol.dialect import Dialect
from serve_app.protocol.server_events import (
    SERVER_EVENT_TYPES,
    ServerEventInvalid,
    serialize_server_event,
    validate_server_event,
    wire_type,
)

DELTA = {
    "event_id": "event_1",
    "response_id": "resp_1",
    "item_id": "item_1",
    "output_index": 0,
    "content_index": 0,
}


def test_beta_names_for_output_events() -> None:
    assert wire_type(Dialect.GA, "response.output_audio.delta") == "response.output_audio.delta"
    assert wire_type(Dialect.BETA, "response.output_audio.delta") == "response.audio.delta"
    assert (
        wire_type(Dialect.BETA, "response.output_audio_transcript.done") == "response.audio_transcript.done"
    )
    assert wire_type(Dialect.BETA, "response.output_text.delta") == "response.text.delta"
    assert wire_type(Dialect.BETA, "response.done") == "response.done"
    for ga_name in SERVER_EVENT_TYPES[Dialect.GA]:
        renamed = wire_type(Dialect.BETA, ga_name)
        if renamed != ga_name:
            assert renamed in SERVER_EVENT_TYPES[Dialect.BETA]


@pytest.mark.parametrize("dialect", list(Dialect))
def test_serialise_keeps_explicit_nulls_and_drops_nothing_set(dialect: Dialect) -> None:
    payload = {
        "type": "input_audio_buffer.committed",
        "event_id": "event_2",
        "item_id": "item_1",
        "previous_item_id": None,
    }
    assert json.loads(serialize_server_event(dialect, payload)) == payload
    without = {k: v for k, v in payload.items() if k != "previous_item_id"}
    assert json.loads(serialize_server_event(dialect, without)) == without


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "response.output_audio.delta", **DELTA},  # missing delta
        {
            "type": "response.output_audio.delta",
            **DELTA,
            "delta": "x",
            "output_index": "0",
        },  # strict: no coercion
        {"type": "response.output_audio.delta", **{**DELTA, "event_id": None}, "delta": "x"},
        {"type": "no.such.event", "event_id": "e"},
        {"type": "session.created", "event_id": "e", "session": {"model": "moshi"}},  # GA session needs type
    ],
)
def test_strict_validation_rejects_bad_server_events(payload: dict) -> None:
    with pytest.raises(ServerEventInvalid):
        validate_server_event(Dialect.GA, payload)


def test_beta_session_cannot_carry_our_model_name() -> None:
    with pytest.raises(ServerEventInvalid):
        validate_server_event(
            Dialect.BETA, {"type": "session.created", "event_id": "e", "session": {"model": "moshi-sft"}}
        )
    validate_server_event(
        Dialect.GA,
        {"type": "session.created", "event_id": "e", "session": {"type": "realtime", "model": "moshi-sft"}},
    )


def test_event_of_the_other_dialect_is_refused() -> None:
    with pytest.raises(ServerEventInvalid, match="not a server event of the beta dialect"):
        validate_server_event(Dialect.BETA, {"type": "response.output_audio.delta", **DELTA, "delta": ""})
