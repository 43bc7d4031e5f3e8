"""What a session asks of its model slot besides hearing audio: who to speak as, and what to say.

The session core does no I/O, so it queues these and the shell drains them (`engine_requests()`) before
each batch of audio (`audio_for_engine()`) and hands each to the slot (SlotStream.set_persona / say /
stop_saying), in order: order is meaning here (a StopSaying then a Say starts the new script; the other
way round would cancel it).
"""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.engine.port import Persona

__all__ = ["ApplyPersona", "EngineRequest", "EngineRequests", "Say", "StopSaying"]


@dataclass(frozen=True, slots=True)
class ApplyPersona:
    """The session's voice and instructions, once, ahead of its first audio (a prompted model's prompt)."""

    persona: Persona


@dataclass(frozen=True, slots=True)
class Say:
    """Force `text` into Moshi's text stream (scripted speech); replaces a running script."""

    text: str


@dataclass(frozen=True, slots=True)
class StopSaying:
    """Stop the running script (nothing, when none runs)."""


EngineRequest = ApplyPersona | Say | StopSaying


class EngineRequests:
    def __init__(self) -> None:
        self._queue: list[EngineRequest] = []

    def put(self, request: EngineRequest) -> None:
        self._queue.append(request)

    def drain(self) -> list[EngineRequest]:
        requests, self._queue = self._queue, []
        return requests
