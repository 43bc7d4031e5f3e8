"""Parsing one client WebSocket message into the dialect's own SDK event model, or a ClientError.

Lenient where real clients differ (unknown extra fields are kept, as the SDK types allow), strict on
what we act on, and every rejection names the offending parameter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from openai.types import realtime as ga
from openai.types.beta import realtime as beta
from pydantic import BaseModel, ValidationError

from serve_app.protocol.dialect import Dialect
from serve_app.protocol.errors import ClientError
from serve_app.protocol.json_object import JsonObject
from serve_app.protocol.sdk_types import classes_by_type, literal_values, union_members

CLIENT_EVENT_TYPES: Final[Mapping[Dialect, Mapping[str, type[BaseModel]]]] = {
    Dialect.GA: classes_by_type(ga.RealtimeClientEvent),
    Dialect.BETA: classes_by_type(beta.RealtimeClientEvent),
}


def parse_client_event(dialect: Dialect, data: str | bytes) -> BaseModel:
    """The validated SDK event (e.g. `openai.types.realtime.SessionUpdateEvent`).

    Raises ClientError (with `event_id` set when the message carried one) for anything unusable."""
    obj = _load_json(data)
    event_id = obj.get("event_id")
    try:
        return _validate(dialect, obj)
    except ClientError as exc:
        exc.event_id = event_id if isinstance(event_id, str) else None
        raise


def _load_json(data: str | bytes) -> JsonObject:
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        obj = json.loads(text)
    except UnicodeDecodeError:
        raise ClientError("invalid_json", detail="the message is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ClientError(
            "invalid_json", detail=f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(obj, dict):
        raise ClientError(
            "invalid_event",
            detail=f"Expected a JSON object with a 'type' field, got a JSON {_json_kind(obj)}.",
        )
    return obj


def _validate(dialect: Dialect, obj: JsonObject) -> BaseModel:
    event_type = obj.get("type")
    if not isinstance(event_type, str):
        raise ClientError("invalid_event", param="type", detail="Missing required parameter: 'type'.")
    model = CLIENT_EVENT_TYPES[dialect].get(event_type)
    if model is None:
        raise ClientError("unknown_event_type", param="type", event_type=event_type, dialect=dialect.value)
    if event_type == "session.update" and isinstance(obj.get("session"), dict):
        # The URL fixed the model and session.update cannot change it; dropping it before validation
        # lets beta clients name any model (beta types it as a Literal of OpenAI's names).
        obj = {**obj, "session": {k: v for k, v in obj["session"].items() if k != "model"}}
        if dialect is Dialect.GA:
            _check_ga_session_type(obj["session"])
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        param, message = explain(model, obj, exc)
        raise ClientError("invalid_event", param=param, detail=message) from None


def _check_ga_session_type(session: JsonObject) -> None:
    # The GA types make session.type the union's discriminator; without it pydantic reports a
    # confusing error per union member, so say plainly what is wrong.
    session_type = session.get("type")
    if session_type is None:
        raise ClientError(
            "invalid_session_update",
            param="session.type",
            detail="Missing required parameter: 'session.type'. Set it to 'realtime' (clients of the "
            "flat beta session shape must connect with the 'OpenAI-Beta: realtime=v1' header).",
        )
    # "transcription" parses: whether it fits is the session's to say (its kind is fixed at connect).


def explain(model: type[BaseModel], obj: JsonObject, exc: ValidationError) -> tuple[str | None, str]:
    """(param, sentence) for the most useful validation error.

    For a field typed as a union of models (an item, a session), the member the data names by its
    `type`/`role` is validated alone, so the message is about that member, not about all of them."""
    for name, info in model.model_fields.items():
        value = obj.get(name)
        members = union_members(info.annotation)
        if not isinstance(value, dict) or len(members) < 2:
            continue
        for key in ("type", "role"):
            allowed = [v for member in members for v in literal_values(member, key)]
            if key in value and allowed and value[key] not in allowed:
                choices = ", ".join(repr(v) for v in dict.fromkeys(allowed))
                return (
                    f"{name}.{key}",
                    f"Invalid value for '{name}.{key}': expected one of {choices} (got {value[key]!r}).",
                )
            if key in value and allowed:
                members = [
                    m for m in members if not literal_values(m, key) or value[key] in literal_values(m, key)
                ]
        if len(members) == 1:
            try:
                members[0].model_validate(value)
            except ValidationError as inner:
                return _describe(inner.errors()[0], value, prefix=(name,))
    return _describe(exc.errors()[0], obj, prefix=())


def _describe(error: Any, data: Any, prefix: tuple[str | int, ...]) -> tuple[str, str]:
    loc = _data_path(tuple(error["loc"]), data, keep_last=error["type"] == "missing")
    param = _format_path(prefix + loc)
    if error["type"] == "missing":
        return param, f"Missing required parameter: '{param}'."
    got = repr(error.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    return param, f"Invalid value for '{param}': {error['msg']} (got {got})."


def _data_path(loc: tuple[str | int, ...], data: Any, *, keep_last: bool) -> tuple[str | int, ...]:
    # Pydantic puts union member tags (class names, "literal['inf']") into `loc`; keep only the steps
    # that exist in the client's data, so `param` is a path the client can recognise.
    path: list[str | int] = []
    current = data
    for position, step in enumerate(loc):
        in_dict = isinstance(current, dict) and isinstance(step, str) and step in current
        in_list = isinstance(current, list) and isinstance(step, int) and 0 <= step < len(current)
        if in_dict or in_list:
            path.append(step)
            current = current[step]
        elif keep_last and position == len(loc) - 1:
            path.append(step)
    return tuple(path)


def _format_path(path: tuple[str | int, ...]) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
    return text


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"
