"""Hypothesis strategies for malformed client events of both dialects: wrongly typed fields, truncated JSON,
unknown types, non-events, binary junk, oversized messages and well-formed events that are impossible on a
fresh session. Each one must be answered by exactly one `error`; shared by the session-core fuzz test and
the live-server one.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

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


def malformed(oversize_limit: int) -> st.SearchStrategy[str | bytes]:
    """Malformed messages for a session or server whose `max_message_bytes` is `oversize_limit`."""
    return st.one_of(
        wrong_field(),
        truncated(),
        st.builds(
            lambda t, e: json.dumps({"type": t, "event_id": e}), st.text(max_size=30), st.text(max_size=8)
        ).filter(lambda s: json.loads(s)["type"] not in CLIENT_TYPES),  # unknown types
        st.sampled_from(["[]", "3", '"x"', "null", "true", "{}", '{"type": 5}', '{"type": null}']),
        st.binary(min_size=1, max_size=40).filter(lambda b: not _is_utf8_json(b)),  # bytes, not JSON
        st.integers(oversize_limit + 1, oversize_limit + 4000).map(  # dropped unparsed
            lambda n: json.dumps({"type": "input_audio_buffer.append", "audio": "B" * n})
        ),
        st.sampled_from([json.dumps(e) for e in OUT_OF_ORDER]),
    )


def _is_utf8_json(data: bytes) -> bool:
    try:
        json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return False
    return True


def expected_event_id(event: str | bytes, oversize_limit: int) -> str | None:
    """The `event_id` an answer must echo: the sent one, where the message parsed to an object with one."""
    if not isinstance(event, str) or len(event.encode()) > oversize_limit:
        return None
    try:
        value = json.loads(event)
    except ValueError:
        return None
    eid = value.get("event_id") if isinstance(value, dict) else None
    return eid if isinstance(eid, str) else None
