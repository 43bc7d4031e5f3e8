"""Where a session's server events queue up: each gets an event_id, its dialect's name and strict
validation against the SDK type, then waits as a JSON text frame for `data_to_send`."""

from __future__ import annotations

from typing import Any

from serve_app.protocol.dialect import Dialect
from serve_app.protocol.ids import new_event_id
from serve_app.protocol.server_events import serialize_server_event, wire_type


class Outbox:
    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._frames: list[str] = []

    def emit(self, payload: dict[str, Any]) -> None:
        """Queue one event, given by its GA type name (renamed here for beta)."""
        event = {**payload, "type": wire_type(self._dialect, payload["type"]), "event_id": new_event_id()}
        self._frames.append(serialize_server_event(self._dialect, event))

    def drain(self) -> list[str]:
        frames, self._frames = self._frames, []
        return frames
