"""The ingress's end of the frame channel: one connection per model replica, shared by its sessions.

Input audio of every session on the connection is coalesced into one AUDIO message per event-loop turn;
each FRAMES message (one tick) is fanned out to the sessions' queues. A session's persona and scripted
speech go out in order with its audio (the audio queued before them is written first). When the
connection drops, every session on it ends (`ChannelEnded` with reason `lost`): their state was on that
replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import numpy as np
import numpy.typing as npt

from serve_app.engine.port import EngineFrame, Persona
from serve_app.transport import wire
from serve_app.transport.address import ChannelAddress
from serve_app.transport.reasons import EndReason
from serve_app.transport.stream import read_message

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
MAX_WRITE_BUFFER_BYTES = 16 * 1024 * 1024
"""A replica that stops reading this much input is cut off (its sessions end)."""


class ChannelEnded(Exception):
    """A session's lease ended on the replica's side, or its connection went away."""

    def __init__(self, reason: EndReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


_END = object()


class ChannelSession:
    """One session's slot as seen through its replica's channel."""

    def __init__(self, channel: ReplicaChannel, lease_id: int) -> None:
        self._channel = channel
        self.lease_id = lease_id
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._ended: ChannelEnded | None = None
        self._closed = False

    def send_audio(self, pcm: npt.NDArray[np.float32]) -> None:
        if self._ended is not None:
            raise self._ended
        if not self._closed:
            self._channel._queue_audio(self.lease_id, pcm)

    def set_persona(self, persona: Persona) -> None:
        """Before the first audio: the replica prefills the persona's prompt, then steps the audio."""
        self._control(wire.encode_persona(self.lease_id, persona))

    def say(self, text: str) -> None:
        self._control(wire.encode_say(self.lease_id, text))

    def stop_saying(self) -> None:
        if self._ended is None and not self._closed:
            self._channel._send_in_order(wire.encode_stop_saying(self.lease_id))

    def _control(self, message: bytes) -> None:
        if self._ended is not None:
            raise self._ended
        if not self._closed:
            self._channel._send_in_order(message)

    async def frames(self) -> AsyncIterator[EngineFrame]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, ChannelEnded):
                raise item
            assert isinstance(item, EngineFrame)
            yield item

    def _deliver(self, frame: EngineFrame) -> None:
        self._queue.put_nowait(frame)

    def end(self, reason: EndReason, detail: str = "") -> None:
        """The lease is over on the replica's side: `frames()` raises once the queued frames are read."""
        if self._ended is None and not self._closed:
            self._ended = ChannelEnded(reason, detail)
            self._queue.put_nowait(self._ended)
            self._channel._forget(self.lease_id)

    def close(self) -> None:
        """Release the lease (idempotent): the replica frees the slot; `frames()` ends."""
        if self._closed:
            return
        self._closed = True
        if self._ended is None:
            self._channel._release(self.lease_id)
        self._queue.put_nowait(_END)


class ReplicaChannel:
    """A connection to one model replica's ReplicaPort. Loop-bound; build with `connect`."""

    def __init__(self, replica_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.replica_id = replica_id
        self._reader = reader
        self._writer = writer
        self._sessions: dict[int, ChannelSession] = {}
        self._pending_leases: list[int] = []
        self._pending_audio: list[npt.NDArray[np.float32]] = []
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        self.last_tick_s = 0.0
        self._reader_task = self._loop.create_task(self._read())
        self.closed = asyncio.Event()

    @classmethod
    async def connect(cls, address: ChannelAddress, replica_id: str, node_id: str) -> ReplicaChannel:
        """Open and authenticate; the replica must say it is `replica_id` (raises ConnectionError)."""

        async def open_and_greet() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            if address.node_id == node_id or not address.tcp_host:
                reader, writer = await asyncio.open_unix_connection(address.unix_path)
            else:
                reader, writer = await asyncio.open_connection(address.tcp_host, address.tcp_port)
            try:
                writer.write(wire.encode_hello(address.token))
                welcome = await read_message(reader)
                if not isinstance(welcome, wire.Welcome) or welcome.replica_id != replica_id:
                    raise ConnectionError(f"the channel at {address} is not replica {replica_id}")
            except BaseException:
                writer.transport.abort()  # a half-open greeting must not leak its socket
                raise
            return reader, writer

        try:
            reader, writer = await asyncio.wait_for(open_and_greet(), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, wire.WireError) as exc:
            raise ConnectionError(f"cannot reach replica {replica_id}'s channel: {exc!r}") from exc
        return cls(replica_id, reader, writer)

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def attach(self, lease_id: int) -> ChannelSession:
        if self.closed.is_set():
            raise ChannelEnded(EndReason.LOST, f"the connection to replica {self.replica_id} is closed")
        session = ChannelSession(self, lease_id)
        self._sessions[lease_id] = session
        self._flush()  # audio queued before for other leases goes first; order per lease is kept anyway
        self._send(wire.encode_attach([lease_id]))
        return session

    # --- writing --------------------------------------------------------------------------------------

    def _queue_audio(self, lease_id: int, pcm: npt.NDArray[np.float32]) -> None:
        self._pending_leases.append(lease_id)
        self._pending_audio.append(pcm)
        if not self._flush_scheduled:
            # Every append that arrives in this loop turn (other sockets, other sessions) shares one write.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending_leases:
            return
        leases, chunks = self._pending_leases, self._pending_audio
        self._pending_leases, self._pending_audio = [], []
        self._send(wire.encode_audio(leases, chunks))

    def _send_in_order(self, message: bytes) -> None:
        """A message about a lease, after the audio queued so far (the replica applies them in order)."""
        self._flush()
        self._send(message)

    def _release(self, lease_id: int) -> None:
        self._forget(lease_id)
        self._flush()
        self._send(wire.encode_release([lease_id]))

    def _forget(self, lease_id: int) -> None:
        self._sessions.pop(lease_id, None)

    def _send(self, data: bytes) -> None:
        if self._writer.is_closing():
            return
        if self._writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER_BYTES:
            self._lose("the model replica stopped reading its input")
            return
        self._writer.write(data)

    # --- reading --------------------------------------------------------------------------------------

    async def _read(self) -> None:
        detail = "the connection to the model replica closed"
        try:
            while (message := await read_message(self._reader)) is not None:
                if isinstance(message, wire.Frames):
                    self.last_tick_s = message.tick_s
                    for lease_id, frame in zip(message.leases, message.frames, strict=True):
                        session = self._sessions.get(lease_id)
                        if session is not None:
                            session._deliver(frame)
                elif isinstance(message, wire.Ended):
                    session = self._sessions.get(message.lease)
                    if session is not None:
                        try:
                            reason = EndReason(message.code)
                        except ValueError:
                            reason = EndReason.LOST
                        session.end(reason, message.message)
                else:
                    raise wire.WireError(f"unexpected {type(message).__name__} from a replica")
        except (ConnectionError, asyncio.IncompleteReadError, wire.WireError) as exc:
            detail = f"the connection to the model replica failed ({type(exc).__name__})"
        finally:
            self._lose(detail)

    def _lose(self, detail: str, *, graceful: bool = False) -> None:
        """The connection is gone (or closed by us, `graceful`: buffered writes still go out): every
        session on it ends."""
        if self.closed.is_set():
            return
        self.closed.set()
        if graceful:
            self._writer.close()
        else:
            self._writer.transport.abort()
        for session in list(self._sessions.values()):
            session.end(EndReason.LOST, detail)
        self._sessions.clear()

    async def close(self) -> None:
        self._flush()
        self._lose("the channel was closed", graceful=True)
        self._reader_task.cancel()
        with contextlib.suppress(BaseException):
            await self._reader_task
