"""A socket's outgoing events, bounded: a client that stops reading cannot make the ingress hold its
events without limit.

The session pumps put events without waiting (they must keep up with the engine); one writer task takes
them off and awaits the socket. When the client does not read, its TCP buffers fill, the writer's send
blocks, and events pile up here: past `max_bytes` or `max_audio_ms` of audio deltas the next `put` raises
`ClientTooSlow`, and a send blocked longer than the shell's send timeout ends the session the same way.
"""

from __future__ import annotations

import asyncio
from collections import deque

from serve_app.constants import FRAME_MS
from serve_app.session.outbox import OutgoingEvent

AUDIO_DELTA = "response.output_audio.delta"
"""The session sends one audio delta per 80 ms engine frame."""


class ClientTooSlow(Exception):
    """The client is not reading its events fast enough; its session must end."""


class SendQueue:
    def __init__(self, *, max_bytes: int, max_audio_ms: int) -> None:
        self._max_bytes = max_bytes
        self._max_audio_ms = max_audio_ms
        self._events: deque[OutgoingEvent | None] = deque()
        self._ready = asyncio.Event()
        self.bytes = 0
        self.audio_ms = 0

    def put(self, event: OutgoingEvent) -> None:
        size, audio = len(event.text), FRAME_MS if event.kind == AUDIO_DELTA else 0
        if self.bytes + size > self._max_bytes or self.audio_ms + audio > self._max_audio_ms:
            raise ClientTooSlow(
                f"{self.bytes} bytes and {self.audio_ms} ms of audio already wait to be sent "
                f"(limits {self._max_bytes} bytes, {self._max_audio_ms} ms)"
            )
        self.bytes += size
        self.audio_ms += audio
        self._events.append(event)
        self._ready.set()

    def finish(self) -> None:
        """No more events: `get` returns None once the queued ones are taken."""
        self._events.append(None)
        self._ready.set()

    async def get(self) -> OutgoingEvent | None:
        while not self._events:
            self._ready.clear()
            await self._ready.wait()
        event = self._events.popleft()
        if event is not None:
            self.bytes -= len(event.text)
            self.audio_ms -= FRAME_MS if event.kind == AUDIO_DELTA else 0
        return event
