"""Every client event type of both dialects parses into its SDK model; malformed ones name their problem."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types import realtime as ga
from openai.types.beta import realtime as beta

from serve_app.protocol.client_events import CLIENT_EVENT_TYPES, parse_client_event
from serve_app.protocol.dialect import Dialect
from serve_app.protocol.errors import ClientError

USER_TEXT = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}

COMMON: dict[str, dict[str, Any]] = {
    "input_audio_buffer.append": {"audio": "AAAA"},
    "input_audio_buffer.commit": {},
    "input_audio_buffer.clear": {},
    "conversation.item.create": {"item": USER_TEXT, "previous_item_id": "root"},
    "conversation.item.retrieve": {"item_id": "item_1"},
    "conversation.item.delete": {"item_id": "item_1"},
    "conversation.item.truncate": {"item_id": "item_1", "content_index": 0, "audio_end_ms": 1500},
    "response.create": {"response": {"metadata": {"client_event_id": "x"}}},
    "response.cancel": {"response_id": "resp_1"},
    "output_audio_buffer.clear": {},
}
VALID = {
    Dialect.GA: {**COMMON, "session.update": {"session": {"type": "realtime", "instructions": "hi"}}},
    Dialect.BETA: {
        **COMMON,
        "session.update": {"session": {"instructions": "hi", "voice": "alloy"}},
        "transcription_session.update": {"session": {}},
    },
}


@pytest.mark.parametrize("dialect", list(Dialect))
def test_the_table_covers_every_client_event_of_the_sdk(dialect: Dialect) -> None:
    assert set(VALID[dialect]) == set(CLIENT_EVENT_TYPES[dialect])


@pytest.mark.parametrize(
    ("dialect", "event_type"), [(d, t) for d in Dialect for t in VALID[d]], ids=lambda v: str(v)
)
def test_every_client_event_type_parses(dialect: Dialect, event_type: str) -> None:
    message = {"type": event_type, "event_id": "evt_1", **VALID[dialect][event_type]}
    event = parse_client_event(dialect, json.dumps(message))
    assert type(event) is CLIENT_EVENT_TYPES[dialect][event_type]
    assert event.type == event_type and event.event_id == "evt_1"
    assert parse_client_event(dialect, json.dumps(message).encode()) == event  # binary frames too


def test_parsed_events_are_the_sdk_models() -> None:
    assert isinstance(parse_client_event(Dialect.GA, '{"type":"response.cancel"}'), ga.ResponseCancelEvent)
    event = parse_client_event(Dialect.BETA, '{"type":"session.update","session":{"modalities":["text"]}}')
    assert isinstance(event, beta.SessionUpdateEvent) and event.session.modalities == ["text"]


def reject(dialect: Dialect, message: str | bytes) -> ClientError:
    with pytest.raises(ClientError) as caught:
        parse_client_event(dialect, message)
    return caught.value


@pytest.mark.parametrize(
    ("dialect", "message", "code", "param", "event_id"),
    [
        (Dialect.GA, "{", "invalid_json", None, None),
        (Dialect.GA, b"\xff", "invalid_json", None, None),
        (Dialect.GA, "[]", "invalid_event", None, None),
        (Dialect.GA, "42", "invalid_event", None, None),
        (Dialect.GA, '{"type": 3, "event_id": "e"}', "invalid_event", "type", "e"),
        (Dialect.GA, '{"type": "transcription_session.update"}', "unknown_event_type", "type", None),
        (
            Dialect.BETA,
            '{"type": "response.audio.delta", "event_id": "e"}',
            "unknown_event_type",
            "type",
            "e",
        ),
        (
            Dialect.GA,
            '{"type": "input_audio_buffer.append", "audio": 5, "event_id": "e"}',
            "invalid_event",
            "audio",
            "e",
        ),
        (
            Dialect.GA,
            '{"type": "session.update", "session": {"voice": "x"}}',
            "invalid_session_update",
            "session.type",
            None,
        ),
        (
            Dialect.GA,
            '{"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"format": '
            '{"type": "audio/pcm", "rate": 16000}}}}}',
            "invalid_event",
            "session.audio.input.format.rate",
            None,
        ),
        (
            Dialect.BETA,
            '{"type": "session.update", "session": {"input_audio_format": "mp3"}}',
            "invalid_event",
            "session.input_audio_format",
            None,
        ),
        (Dialect.GA, '{"type": "session.update"}', "invalid_event", "session", None),
        (
            Dialect.GA,
            '{"type": "conversation.item.create", "item": {"type": "message", "role": "user", '
            '"content": [{"type": "bogus"}]}}',
            "invalid_event",
            "item.content[0].type",
            None,
        ),
        (
            Dialect.GA,
            '{"type": "conversation.item.create", "item": {"type": "message", "role": "robot", '
            '"content": []}}',
            "invalid_event",
            "item.role",
            None,
        ),
        (
            Dialect.GA,
            '{"type": "conversation.item.create", "item": {"type": "function_call"}}',
            "invalid_event",
            "item.arguments",
            None,
        ),
        (
            Dialect.BETA,
            '{"type": "conversation.item.create", "item": {"type": "message", "role": "user", '
            '"content": [{"type": "input_text", "text": 5}]}}',
            "invalid_event",
            "item.content[0].text",
            None,
        ),
        (
            Dialect.GA,
            '{"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": "x"}',
            "invalid_event",
            "audio_end_ms",
            None,
        ),
        (
            Dialect.GA,
            '{"type": "response.create", "response": {"max_output_tokens": "lots"}}',
            "invalid_event",
            "response.max_output_tokens",
            None,
        ),
    ],
)
def test_malformed_events_name_their_problem(
    dialect: Dialect, message: str | bytes, code: str, param: str | None, event_id: str | None
) -> None:
    error = reject(dialect, message)
    assert (error.code, error.param, error.event_id) == (code, param, event_id)
    assert error.message


def test_messages_read_like_the_hosted_service() -> None:
    assert reject(Dialect.GA, '{"type": "conversation.item.retrieve"}').message == (
        "Missing required parameter: 'item_id'."
    )
    message = reject(
        Dialect.GA,
        '{"type":"conversation.item.create","item":{"type":"message","role":"robot","content":[]}}',
    ).message
    assert (
        message
        == "Invalid value for 'item.role': expected one of 'system', 'user', 'assistant' (got 'robot')."
    )
    assert (
        "Input should be 24000 (got 16000)"
        in reject(
            Dialect.GA,
            '{"type":"session.update","session":{"type":"realtime","audio":{"output":{"format":{"type":"audio/pcm","rate":16000}}}}}',
        ).message
    )
    assert reject(Dialect.GA, '{"type":"x.y"}').message == (
        "Invalid value: 'x.y'. This is not a client event type of the ga dialect."
    )


def test_lenient_where_real_clients_differ() -> None:
    # Unknown extra fields are kept, as the SDK types allow.
    event = parse_client_event(Dialect.GA, '{"type":"response.cancel","client_hint":1}')
    assert event.model_extra == {"client_hint": 1}
    # A beta client naming our model (beta types model as a Literal of OpenAI names) is not refused.
    event = parse_client_event(
        Dialect.BETA, '{"type":"session.update","session":{"model":"moshi-sft","voice":"ash"}}'
    )
    assert isinstance(event, beta.SessionUpdateEvent) and "model" not in event.session.model_fields_set
    # A beta client may send GA-shaped session fields: they validate as extras (session layer reads them).
    event = parse_client_event(
        Dialect.BETA, '{"type":"session.update","session":{"type":"realtime","audio":{}}}'
    )
    assert isinstance(event, beta.SessionUpdateEvent) and event.session.model_extra == {
        "type": "realtime",
        "audio": {},
    }
    # Lax numbers, as the SDK itself accepts them.
    event = parse_client_event(
        Dialect.GA,
        '{"type":"conversation.item.truncate","item_id":"i","content_index":"0","audio_end_ms":"10"}',
    )
    assert isinstance(event, ga.ConversationItemTruncateEvent) and event.audio_end_ms == 10
