"""Where a session's server events queue up: each gets an event_id, its dialect's name and strict
validation against the SDK type, then waits as a JSON text frame for `events_to_send`."""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.protocol.dialect import Dialect
from serve_app.protocol.errors import ClientError, error_payload
from serve_app.protocol.ids import new_event_id
from serve_app.protocol.json_object import JsonObject
from serve_app.protocol.server_events import serialize_server_event, wire_type


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """One queued server event: its JSON text frame plus what a socket shell may want to count."""

    text: str
    kind: str
    """The GA type name, whatever the dialect (`response.output_audio.delta`, `error`, ...)."""
    error_code: str | None = None


class Outbox:
    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._events: list[OutgoingEvent] = []

    def emit(self, payload: JsonObject) -> None:
        """Queue one event, given by its GA type name (renamed here for beta)."""
        event = {**payload, "type": wire_type(self._dialect, payload["type"]), "event_id": new_event_id()}
        error = payload.get("error")
        code = error.get("code") if payload["type"] == "error" and isinstance(error, dict) else None
        text = serialize_server_event(self._dialect, event)
        self._events.append(OutgoingEvent(text, payload["type"], code))

    def client_error(self, e: ClientError) -> None:
        """The `error` a client event gets: its code, param and (where known) the event's id."""
        self.emit(error_payload(e.code, e.message, error_type=e.type, param=e.param, event_id=e.event_id))

    def drain(self) -> list[OutgoingEvent]:
        events, self._events = self._events, []
        return events
