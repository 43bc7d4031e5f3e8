"""A call's client side as a ClientChannel: its `oai-events` data channel, its media track, and any
sideband WebSockets that joined it (`/v1/realtime?call_id=`).

Server events go to the data channel (held until it opens: `session.created` arrives when it does) and to
every sideband socket; audio deltas go to the track instead (audio_out.py), never on the wire. Client
events come from the data channel, the sideband sockets and the track (its audio as appends), in one
queue, so the session sees them in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from aiortc import RTCDataChannel
from starlette.websockets import WebSocket, WebSocketDisconnect

from serve_app.protocol.audio_stream import AudioDecoder
from serve_app.protocol.codecs import AudioFormat
from serve_app.protocol.dialect import Dialect
from serve_app.protocol.ids import new_event_id
from serve_app.protocol.server_events import serialize_server_event
from serve_app.server.send_queue import AUDIO_DELTA
from serve_app.session.outbox import OutgoingEvent
from serve_app.webrtc.audio_out import OutputTrack

if TYPE_CHECKING:
    from serve_app.session.session import RealtimeSession

logger = logging.getLogger(__name__)

DATA_CHANNEL_LABEL = "oai-events"
MAX_HELD = 4096
"""Events kept for a data channel not open yet (past it they are dropped: a client that connects media
but never opens its channel must not grow the ingress without bound)."""
SIDEBAND_QUEUE = 1024
"""Events a sideband socket may have waiting; past it the socket is dropped (the call goes on)."""


class CallChannel:
    def __init__(self, headers: Mapping[str, str], query: Mapping[str, str]) -> None:
        self.headers = dict(headers)
        self.query = dict(query)
        self.subprotocols: list[str] = []
        self.track = OutputTrack(self._buffer_event)
        self.admission: asyncio.Future[tuple[str, str] | None] = asyncio.get_running_loop().create_future()
        """Resolved by the session's first event: None (admitted: `session.created`) or the refusal's
        (code, message)."""
        self.on_close: Callable[[], Awaitable[None]] | None = None
        """Hangs the call up (closes the peer connection); set by the call registry."""
        self.closed = False
        self._incoming: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._dc: RTCDataChannel | None = None
        self._held: list[str] = []
        self._sidebands: set[asyncio.Queue[str | None]] = set()
        self._session: RealtimeSession | None = None
        self._decoder: AudioDecoder | None = None
        self._closing: asyncio.Future[None] | None = None

    def bind(self, session: RealtimeSession) -> None:
        """The session this channel serves: its audio formats decide how track audio is carried."""
        self._session = session

    def input_format(self) -> AudioFormat:
        assert self._session is not None
        return self._session.config.input_format

    # Client side -----------------------------------------------------------------------------------

    def hear(self, text: str | bytes) -> None:
        """A client message (data channel, sideband, the track's appends)."""
        if not self.closed:
            self._incoming.put_nowait(text)

    def attach(self, dc: RTCDataChannel) -> None:
        if dc.label != DATA_CHANNEL_LABEL:
            logger.info("ignoring data channel %r (not %s)", dc.label, DATA_CHANNEL_LABEL)
            return
        self._dc = dc
        dc.on("message", self.hear)
        dc.on("close", self._data_channel_closed)
        if dc.readyState == "open":  # aiortc announces a remote channel already open
            self._release_held()
        else:
            dc.on("open", self._release_held)

    async def join(self, ws: WebSocket) -> None:
        """A sideband socket (accepted already): it sees the call's events and may send client events,
        until it or the call closes; closing it does not end the call."""
        queue: asyncio.Queue[str | None] = asyncio.Queue(SIDEBAND_QUEUE)
        self._sidebands.add(queue)

        async def write() -> None:
            while (text := await queue.get()) is not None:
                await ws.send_text(text)

        async def read() -> None:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                self.hear(message.get("text") or message.get("bytes") or b"")

        tasks = [asyncio.create_task(write()), asyncio.create_task(read())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._sidebands.discard(queue)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception, WebSocketDisconnect):
                await asyncio.wait_for(ws.close(code=1000), 1.0)

    # ClientChannel ---------------------------------------------------------------------------------

    async def accept(self, subprotocol: str | None) -> None:
        """Nothing to do: the HTTP exchange that made the call is its handshake."""

    async def receive_text(self) -> str | bytes | None:
        return await self._incoming.get()

    async def send(self, event: OutgoingEvent) -> None:
        if not self.admission.done():
            self.admission.set_result(_refusal(event))
        if event.kind == AUDIO_DELTA:
            self._play(event.text)
            return
        if event.kind == "response.done":
            response = json.loads(event.text)["response"]
            details = response.get("status_details") or {}
            self.track.response_done(response["id"], response["status"], details.get("reason"))
        elif event.kind == "output_audio_buffer.cleared":
            self.track.flush()  # the client's output_audio_buffer.clear, acknowledged by the session
        self._forward(event.text)

    async def close(self, code: int) -> None:
        if self.closed:
            return
        self.closed = True
        self._incoming.put_nowait(None)
        if not self.admission.done():
            self.admission.set_result(("server_error", "The call ended before its session started."))
        for queue in self._sidebands:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        self.track.stop()
        if self.on_close is not None:
            await self.on_close()

    # Server side -----------------------------------------------------------------------------------

    def _play(self, text: str) -> None:
        session = self._session
        fmt = AudioFormat.PCM16 if session is None else session.config.output_format
        if self._decoder is None or self._decoder.format is not fmt:
            self._decoder = AudioDecoder(fmt)
        delta = json.loads(text)
        self.track.play(delta["response_id"], self._decoder.decode(delta["delta"]))

    def _buffer_event(self, kind: str, response_id: str) -> None:
        """An `output_audio_buffer.*` event of the track's (GA only: the beta dialect has none)."""
        if self._session is not None and self._session.dialect is not Dialect.GA:
            return
        payload = {"type": kind, "event_id": new_event_id(), "response_id": response_id}
        self._forward(serialize_server_event(Dialect.GA, payload))

    def _forward(self, text: str) -> None:
        dc = self._dc
        if dc is not None and dc.readyState == "open":
            dc.send(text)
        elif len(self._held) < MAX_HELD:
            self._held.append(text)
        for queue in list(self._sidebands):
            try:
                queue.put_nowait(text)
            except asyncio.QueueFull:
                logger.warning("dropping a sideband socket that does not read its events")
                self._sidebands.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)

    def _data_channel_closed(self) -> None:
        # The client closed its event channel: the call is over (as a browser's pc.close() does).
        if not self.closed:
            self._closing = asyncio.ensure_future(self.close(1000))

    def _release_held(self) -> None:
        dc = self._dc
        assert dc is not None
        held, self._held = self._held, []
        for text in held:
            dc.send(text)


def _refusal(first: OutgoingEvent) -> tuple[str, str] | None:
    """A session's first event is `session.created`, or the `error` of its refusal."""
    if first.kind != "error":
        return None
    error = json.loads(first.text)["error"]
    return str(error.get("code") or "server_error"), str(error.get("message") or "")
