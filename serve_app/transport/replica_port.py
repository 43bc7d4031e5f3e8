"""The model replica's end of the frame channel: leases bound to runner slots, served over connections.

A lease is one admitted session: a slot of the replica's ClockedRunner plus the connection its frames go
to. Each tick the runner thread hands the loop one batch; the loop writes one FRAMES message per
connection. Connections come over a Unix socket from ingress replicas on the same node and over TCP from
other nodes; each must open with the replica's token, which only admissions (over Ray) carry.

A session resumed from another replica is admitted only if it also fits with its catch-up: it arrives
behind real time by the input it missed (and misses more while its slot is rebuilt), and must step that
backlog faster than real time beside the sessions already here (`TickBudget.resume_refusal`).

A session's persona (PersonaPlex's voice and role-text prompt) and scripted speech arrive as messages on
its connection, in order with its audio; the runner applies them (serve_app/engine/runner.py). A session
with a persona prompt cannot be rebuilt elsewhere (its voice prompt is embeddings, not in the token
history it keeps), so a draining replica keeps it to its end instead of asking it to move.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from serve_app.engine.errors import FellBehind, SlotEnded, TickBudgetFull, TickFailed
from serve_app.engine.history import ResumeWindow
from serve_app.engine.port import EngineFrame
from serve_app.engine.rebuild import SlotRebuild
from serve_app.engine.runner import CATCH_UP_FRACTION, ClockedRunner
from serve_app.engine.tick_stats import ErrorCallback, RebuiltCallback, TickOutput
from serve_app.transport import wire
from serve_app.transport.address import ChannelAddress
from serve_app.transport.reasons import EndReason
from serve_app.transport.stream import read_message

logger = logging.getLogger(__name__)

MAX_WRITE_BUFFER_BYTES = 16 * 1024 * 1024
"""An ingress that stops reading this much output is cut off (its sessions end), not buffered forever."""
HELLO_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 2.0
"""On close, how long open connections get to flush their last messages before they are cut."""
REBUILD_GUESS_S = 0.5
"""What a slot's rebuild is taken to last until this replica has rebuilt one (then: its last one). The
tiny checkpoint on 2 CPU cores: 0.14 s for 1 s of history, 1.1 s for 240 s (docs/BENCHMARKS.md)."""


@dataclass(eq=False)
class Lease:
    id: int
    session_id: str
    slot: int
    ended: asyncio.Future[EndReason]
    connection: _Connection | None = None
    prompted: bool = False
    """Its slot holds a persona prompt: it cannot move to another replica."""


@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    leases: set[int] = field(default_factory=set)

    def send(self, data: bytes) -> None:
        if self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER_BYTES:
            logger.warning("ingress connection stopped reading: closing it")
            self.writer.transport.abort()
            return
        self.writer.write(data)


def _reason(error: SlotEnded) -> EndReason:
    if isinstance(error, FellBehind):
        return EndReason.FELL_BEHIND
    if isinstance(error, TickFailed):
        return EndReason.MODEL_FAILED
    return EndReason.LOST


class ReplicaPort:
    """Owns the leases of one runner and the listeners ingress replicas connect to. Loop-bound."""

    def __init__(self, runner: ClockedRunner, replica_id: str, node_id: str = "") -> None:
        self._runner = runner
        self.replica_id = replica_id
        self._node_id = node_id
        self._token = secrets.token_bytes(16)
        self._ids = itertools.count(1)
        self._leases: dict[int, Lease] = {}
        self._by_slot: dict[int, Lease] = {}
        self._loop = asyncio.get_running_loop()
        self._servers: list[asyncio.Server] = []
        self._handlers: dict[asyncio.Task[None], _Connection] = {}
        """The open connections, by the task serving each (`close` ends them: a closed asyncio server
        keeps the connections it accepted)."""
        self._dir: str | None = None
        self.address: ChannelAddress | None = None
        self.rebuild_s = REBUILD_GUESS_S
        """How long the last rebuild of a resumed session's slot took here (wall time, s)."""
        runner.add_output_listener(self._on_tick)

    async def start(self, tcp_host: str | None = None, tcp_port: int = 0) -> ChannelAddress:
        self._dir = tempfile.mkdtemp(prefix="moshi-rt-")
        os.chmod(self._dir, 0o700)
        path = str(Path(self._dir) / "channel.sock")
        self._servers.append(await asyncio.start_unix_server(self._serve, path=path))
        host, port = "", 0
        if tcp_host is not None:
            server = await asyncio.start_server(self._serve, host=tcp_host, port=tcp_port)
            self._servers.append(server)
            host, port = server.sockets[0].getsockname()[:2]
        self.address = ChannelAddress(self._node_id, path, host, port, self._token)
        return self.address

    @property
    def sessions(self) -> int:
        return len(self._leases)

    # --- leases ---------------------------------------------------------------------------------------

    def lease(
        self,
        session_id: str,
        *,
        check_budget: bool = True,
        resume: ResumeWindow | None = None,
        on_rebuilt: RebuiltCallback | None = None,
    ) -> Lease:
        """Admit a session into a free slot: raises NoFreeSlot (or TickBudgetFull). With `resume`, the
        session continues from another replica: its slot is rebuilt from the window first, and with
        `check_budget` it must also have room to catch up on the input it missed."""
        if check_budget and resume is not None:
            self._judge_catch_up(resume)
        lease_id = next(self._ids)
        slot = self._runner.open_slot(
            None,
            on_error=self._error_callback(lease_id),
            tag=lease_id,  # the tick's output names the lease, not the slot (a slot is reused)
            check_budget=check_budget,
            resume=resume,
            on_rebuilt=self._rebuilt_callback(on_rebuilt),
        )
        lease = Lease(lease_id, session_id, slot, self._loop.create_future())
        self._leases[lease_id] = lease
        self._by_slot[slot] = lease
        return lease

    def _judge_catch_up(self, resume: ResumeWindow) -> None:
        """Refuse (TickBudgetFull) a resumed session whose backlog the ticks here leave no room to catch up:
        the input it missed so far, plus what it misses while its slot is rebuilt."""
        backlog_s = resume.pending_age_s + self.rebuild_s
        refusal = self._runner.budget.resume_refusal(
            self._runner.capacity(), backlog_s, catch_up_fraction=CATCH_UP_FRACTION
        )
        if refusal is not None:
            raise TickBudgetFull(refusal)

    def _rebuilt_callback(self, then: RebuiltCallback | None) -> RebuiltCallback:
        def on_rebuilt(job: SlotRebuild) -> None:  # runner thread
            self.rebuild_s = time.perf_counter() - job.started
            if then is not None:
                then(job)

        return on_rebuilt

    def release(self, lease_id: int, reason: EndReason = EndReason.RELEASED, detail: str = "") -> None:
        """End a lease (idempotent): free its slot, tell its connection why unless the ingress asked."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return
        self._by_slot.pop(lease.slot, None)
        self._runner.close_slot(lease.slot)
        if lease.connection is not None:
            lease.connection.leases.discard(lease_id)
            if reason is not EndReason.RELEASED:
                lease.connection.send(wire.encode_ended(lease_id, reason.value, detail))
        if not lease.ended.done():
            lease.ended.set_result(reason)

    def move_all(self, detail: str) -> int:
        """Tell every lease's ingress to continue its session elsewhere (the replica is draining), and
        free the slots. Returns how many were told. A session with a persona prompt is not told: it
        cannot be rebuilt elsewhere, so it stays until it ends (within the drain's grace period)."""
        leases = [lease_id for lease_id, lease in self._leases.items() if not lease.prompted]
        for lease_id in leases:
            self.release(lease_id, EndReason.MOVED, detail)
        return len(leases)

    def _error_callback(self, lease_id: int) -> ErrorCallback:
        def on_error(error: BaseException) -> None:  # runner thread
            ended = error if isinstance(error, SlotEnded) else SlotEnded(str(error))
            self._loop.call_soon_threadsafe(self.release, lease_id, _reason(ended), str(ended))

        return on_error

    def _on_tick(self, output: TickOutput) -> None:  # runner thread: the tick's frames, by lease id
        with contextlib.suppress(RuntimeError):  # the loop is gone: the replica is shutting down
            self._loop.call_soon_threadsafe(self._dispatch, output.stats.duration_s, output.frames)

    def _dispatch(self, tick_s: float, batch: Sequence[tuple[int, EngineFrame]]) -> None:
        """One FRAMES message per connection for this tick."""
        grouped: dict[_Connection, tuple[list[int], list[EngineFrame]]] = {}
        for lease_id, frame in batch:
            lease = self._leases.get(lease_id)
            if lease is None or lease.connection is None:
                continue  # released while the tick ran, or not attached yet
            leases, frames = grouped.setdefault(lease.connection, ([], []))
            leases.append(lease_id)
            frames.append(frame)
        for connection, (leases, frames) in grouped.items():
            connection.send(wire.encode_frames(tick_s, leases, frames))

    # --- connections ----------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = connection
        try:
            hello = await asyncio.wait_for(read_message(reader), HELLO_TIMEOUT_S)
            if not isinstance(hello, wire.Hello) or not secrets.compare_digest(hello.token, self._token):
                logger.warning("channel connection refused: bad token")
                return
            connection.send(wire.encode_welcome(self.replica_id))
            while (message := await read_message(reader)) is not None:
                self._handle(connection, message)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, wire.WireError) as exc:
            logger.info("channel connection ended: %s", type(exc).__name__)
        finally:
            for lease_id in list(connection.leases):
                self.release(lease_id, EndReason.LOST, "the ingress connection closed")
            writer.close()
            try:
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            finally:
                self._handlers.pop(task, None)

    def _handle(self, connection: _Connection, message: wire.Message) -> None:
        if isinstance(message, wire.Audio):
            for lease_id, pcm in zip(message.leases, message.chunks, strict=True):
                if lease_id in connection.leases:
                    self._runner.push(self._leases[lease_id].slot, pcm)
                else:
                    self._refuse(connection, lease_id)
        elif isinstance(message, wire.Attach):
            for lease_id in message.leases:
                lease = self._leases.get(lease_id)
                if lease is None or lease.connection not in (None, connection):
                    self._refuse(connection, lease_id)
                    continue
                lease.connection = connection
                connection.leases.add(lease_id)
        elif isinstance(message, wire.Release):
            for lease_id in message.leases:
                if lease_id in connection.leases:
                    self.release(lease_id)
        elif isinstance(message, wire.SetPersona | wire.Say | wire.StopSaying):
            lease = self._leases.get(message.lease) if message.lease in connection.leases else None
            if lease is None:
                self._refuse(connection, message.lease)
            elif isinstance(message, wire.SetPersona):
                lease.prompted = self._runner.set_persona(lease.slot, message.persona) or lease.prompted
            elif isinstance(message, wire.Say):
                self._runner.say(lease.slot, message.text)
            else:
                self._runner.stop_saying(lease.slot)
        else:
            raise wire.WireError(f"unexpected {type(message).__name__} from an ingress")

    def _refuse(self, connection: _Connection, lease_id: int) -> None:
        """Input for a session this replica does not hold on this connection: its state is not here."""
        connection.send(
            wire.encode_ended(lease_id, EndReason.UNKNOWN.value, "this replica holds no such session")
        )

    async def close(self) -> None:
        for lease_id in list(self._leases):
            self.release(lease_id, EndReason.LOST, "the model replica is shutting down")
        for server in self._servers:
            server.close()
        # The ENDED messages just queued go out first (close flushes); then each connection's handler ends
        # and the ingress sees the replica leave, instead of holding a connection to nothing.
        handlers = dict(self._handlers)
        for connection in handlers.values():
            connection.writer.close()
        if handlers:
            _, stuck = await asyncio.wait(handlers, timeout=CLOSE_TIMEOUT_S)
            for task in stuck:  # a peer that does not read its last messages
                handlers[task].writer.transport.abort()
                task.cancel()
        if self._dir is not None:
            with contextlib.suppress(OSError):
                for entry in Path(self._dir).iterdir():
                    entry.unlink()
                os.rmdir(self._dir)
