"""Serialising server events: each payload is validated, strictly, by its dialect's SDK class first.

Payloads are built as plain dicts by the session (complete ones: strict clients need more than the SDK's
required minimum) and named by their GA type; `wire_type` renames the few events beta calls otherwise.
A payload the SDK type rejects is a bug on our side and raises ServerEventInvalid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from openai.types import realtime as ga
from openai.types.beta import realtime as beta
from pydantic import BaseModel, ValidationError

from serve_app.protocol.dialect import Dialect
from serve_app.protocol.sdk_types import classes_by_type

SERVER_EVENT_TYPES: Final[Mapping[Dialect, Mapping[str, type[BaseModel]]]] = {
    Dialect.GA: classes_by_type(ga.RealtimeServerEvent),
    Dialect.BETA: classes_by_type(beta.RealtimeServerEvent),
}

_BETA_NAMES: Final = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}


class ServerEventInvalid(ValueError):
    """A server event its dialect's SDK type rejects: a bug here, never the client's fault."""


def wire_type(dialect: Dialect, ga_type: str) -> str:
    """The dialect's name for an event the GA dialect calls `ga_type`."""
    return _BETA_NAMES.get(ga_type, ga_type) if dialect is Dialect.BETA else ga_type


def validate_server_event(dialect: Dialect, payload: Mapping[str, Any]) -> BaseModel:
    model = SERVER_EVENT_TYPES[dialect].get(str(payload.get("type")))
    if model is None:
        raise ServerEventInvalid(f"{payload.get('type')!r} is not a server event of the {dialect} dialect")
    try:
        return model.model_validate(dict(payload), strict=True)
    except ValidationError as exc:
        raise ServerEventInvalid(f"{payload.get('type')} ({dialect}): {exc}") from exc


def serialize_server_event(dialect: Dialect, payload: Mapping[str, Any]) -> str:
    """One JSON text frame: exactly the fields the payload set, explicit nulls included (strict clients
    read them)."""
    return validate_server_event(dialect, payload).model_dump_json(exclude_unset=True)
