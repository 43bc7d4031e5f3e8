"""Fuzzing the session core: 10,000+ malformed, truncated, oversized, wrongly-typed and out-of-order client
events of both dialects. Each gets exactly one `error` that strictly validates against the `openai` type
(the harness checks every event), nothing raises, and the session stays open and usable.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_app.protocol.dialect import Dialect

from .conftest import FAST
from .harness import Harness, only_error

EVENTS_PER_EXAMPLE = 50
EXAMPLES = 210  # × 50 events, over both dialects: 10,500
SETTINGS = FAST.model_copy(update={"max_message_bytes": 2048})

CLIENT_TYPES = [
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.delete",
    "conversation.item.truncate",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
    "transcription_session.update",
]
# A wrong value for every field a client event can carry (none of them is valid for that field).
WRONG_FIELDS: dict[str, list[Any]] = {
    "session": [5, "x", [], {"turn_detection": "loud"}, {"voice": 7}, {"tools": "no"}],
    "audio": [None, 12, [], "***", "QQ", "A" * 3],
    "item": [None, "x", 3, {"type": "nope"}, {"type": "message", "role": "robot"}, {"content": 5}],
    "item_id": [None, 7, [], {}],
    "content_index": ["0", -1, 1.5, None],
    "audio_end_ms": ["10", -5, None, []],
    "response": ["x", 3, {"modalities": "audio"}, {"metadata": 5}, {"voice": []}],
    "response_id": [5, [], {}],
    "previous_item_id": [3, [], {}],
}
# Events that are well formed but impossible on a fresh session: each is exactly one error too.
OUT_OF_ORDER = [
    {"type": "response.cancel"},
    {"type": "response.cancel", "response_id": "resp_none"},
    {"type": "input_audio_buffer.commit"},
    {"type": "conversation.item.delete", "item_id": "item_none"},
    {"type": "conversation.item.retrieve", "item_id": "item_none"},
    {"type": "conversation.item.truncate", "item_id": "item_none", "content_index": 0, "audio_end_ms": 0},
]

event_id = st.one_of(st.none(), st.text(st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=12))


@st.composite
def wrong_field(draw: st.DrawFn) -> str:
    event: dict[str, Any] = {"type": draw(st.sampled_from(CLIENT_TYPES))}
    name = draw(st.sampled_from(sorted(WRONG_FIELDS)))
    event[name] = draw(st.sampled_from(WRONG_FIELDS[name]))
    if event["type"] == "transcription_session.update":
        pass  # refused whatever it carries
    elif name not in _fields_of(event["type"]):
        event["type"] = _owner_of(name)  # put the wrong value where it counts
    eid = draw(event_id)
    if eid is not None:
        event["event_id"] = eid
    return json.dumps(event)


def _fields_of(kind: str) -> set[str]:
    return {
        "session.update": {"session"},
        "input_audio_buffer.append": {"audio"},
        "conversation.item.create": {"item", "previous_item_id"},
        "conversation.item.retrieve": {"item_id"},
        "conversation.item.delete": {"item_id"},
        "conversation.item.truncate": {"item_id", "content_index", "audio_end_ms"},
        "response.create": {"response"},
        "response.cancel": {"response_id"},
    }.get(kind, set())


def _owner_of(name: str) -> str:
    return next(kind for kind in CLIENT_TYPES if name in _fields_of(kind))


@st.composite
def truncated(draw: st.DrawFn) -> str:
    text = json.dumps({"type": draw(st.sampled_from(CLIENT_TYPES)), "event_id": "e", "audio": "AAAA"})
    return text[: draw(st.integers(1, len(text) - 1))]


malformed = st.one_of(
    wrong_field(),
    truncated(),
    st.builds(
        lambda t, e: json.dumps({"type": t, "event_id": e}), st.text(max_size=30), st.text(max_size=8)
    ).filter(lambda s: json.loads(s)["type"] not in CLIENT_TYPES),  # unknown types
    st.sampled_from(["[]", "3", '"x"', "null", "true", "{}", '{"type": 5}', '{"type": null}']),  # not events
    st.binary(min_size=1, max_size=40).filter(lambda b: not _is_utf8_json(b)),  # bytes that are not JSON
    st.integers(2049, 6000).map(
        lambda n: json.dumps({"type": "input_audio_buffer.append", "audio": "B" * n})
    ),
    # (over SETTINGS.max_message_bytes: dropped unparsed)
    st.sampled_from([json.dumps(e) for e in OUT_OF_ORDER]),
)


def _is_utf8_json(data: bytes) -> bool:
    try:
        json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return False
    return True


sent = 0


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    dialect=st.sampled_from([Dialect.GA, Dialect.BETA]),
    events=st.lists(malformed, min_size=EVENTS_PER_EXAMPLE, max_size=EVENTS_PER_EXAMPLE),
)
def test_every_malformed_event_gets_one_valid_error_and_the_session_goes_on(
    dialect: Dialect, events: list[str | bytes]
) -> None:
    global sent
    h = Harness(dialect, SETTINGS)
    for event in events:
        error = only_error(h.send(event))  # exactly one, strict-validated against the SDK type
        assert error["code"] and error["message"]
        if isinstance(event, str) and '"event_id": "' in event and error["code"] != "message_too_large":
            parsed = _object_or_none(event)
            if parsed is not None and isinstance(parsed.get("event_id"), str):
                assert error["event_id"] == parsed["event_id"]
        assert not h.session.closed
        sent += 1
    assert h.append(480) == []  # still usable: audio goes to Moshi
    assert len(h.session.audio_for_engine()) == 1


def _object_or_none(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def test_the_fuzzing_threw_ten_thousand_events() -> None:
    # Runs after the property test (file order): hypothesis ran every example.
    assert sent >= 10_000, sent
