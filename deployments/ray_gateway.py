"""ModelGateway over Ray: a session is one lease call to a model replica; its audio rides the frame channel.

Routing happens once, when the lease call is made; the admission names the replica's channel, and all
of this ingress's sessions on that replica share one connection to it. When the replica dies (both the
connection and the lease call fail) or drains (it says `moved`), each of its sessions is re-admitted with
the history it kept, and another replica rebuilds its slot; a session is never re-opened elsewhere without
its state. Only with no room anywhere is it reported lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from deployments.wire import Admission, LeaseEnd
from serve_app.constants import SAMPLE_RATE
from serve_app.engine.history import HistoryLost, ResumeWindow, SessionHistory
from serve_app.engine.port import EngineFrame
from serve_app.server.gateway import (
    GatewayError,
    ModelNotFound,
    NoCapacity,
    SessionFellBehind,
    SessionLost,
)
from serve_app.transport.ingress_channel import ChannelEnded, ChannelSession
from serve_app.transport.pool import ChannelPool
from serve_app.transport.reasons import EndReason

logger = logging.getLogger("ray.serve")

DEFAULT_ADMISSION_TIMEOUT_S = 2.0
"""How long a new session may wait for a replica with room. Serve routes a call only to a replica below
`max_ongoing_requests` (= slots) and otherwise queues it at the caller indefinitely; a session still
waiting after this long finds every replica full, so it is refused instead of hanging. 1 s proved too short
on a loaded 2-core node: Serve's routing (queue-length probes) alone took longer and idle replicas were
reported full."""
ADMISSION_ATTEMPTS = 3
"""A replica whose ticks leave no room refuses; another replica of the deployment may have it."""
LEASE_END_TIMEOUT_S = 5.0
"""After a release, how long the lease call may take to finish before it is cancelled."""
DEFAULT_RESUME_TIMEOUT_S = 2.0
"""How long a session whose replica drained or died may look for another with room before it is lost."""
RESUME_RETRY_S = 0.1

LEDGER_SESSIONS = 4096


class SessionLedger:
    """Which replicas served each recent session, frame by frame (bounded; for operators and tests)."""

    def __init__(self, capacity: int = LEDGER_SESSIONS) -> None:
        self._capacity = capacity
        self._served: collections.OrderedDict[str, dict[str, int]] = collections.OrderedDict()
        self._moves: collections.OrderedDict[str, list[dict[str, Any]]] = collections.OrderedDict()

    def record(self, session_id: str, replica_id: str) -> None:
        counts = self._served.get(session_id)
        if counts is None:
            counts = self._served[session_id] = {}
            while len(self._served) > self._capacity:
                self._served.popitem(last=False)
        counts[replica_id] = counts.get(replica_id, 0) + 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {sid: dict(counts) for sid, counts in self._served.items()}

    def record_move(self, session_id: str, move: dict[str, Any]) -> None:
        self._moves.setdefault(session_id, []).append(move)
        while len(self._moves) > self._capacity:
            self._moves.popitem(last=False)

    def moves(self) -> dict[str, list[dict[str, Any]]]:
        """session id → its moves: why, from and to which replica, the output gap (s)."""
        return {sid: list(moves) for sid, moves in self._moves.items()}


def _gateway_error(ended: ChannelEnded) -> GatewayError:
    if ended.reason is EndReason.FELL_BEHIND:
        return SessionFellBehind(ended.detail)
    return SessionLost(ended.detail or ended.reason.value)


class MoveObserver(Protocol):
    """Told of every session that moved to another replica, or could not (the ingress's metrics)."""

    def session_moved(self, model_id: str, reason: str, gap_s: float) -> None: ...

    def session_move_failed(self, model_id: str, reason: str) -> None: ...


class _NoMoves:
    def session_moved(self, model_id: str, reason: str, gap_s: float) -> None:
        pass

    def session_move_failed(self, model_id: str, reason: str) -> None:
        pass


class _Lease:
    """One admission of a session on one replica: the lease call and the session's share of the channel."""

    def __init__(self, admission: Admission, call: DeploymentResponseGenerator[Any], channel: ChannelSession):
        self.admission = admission
        self.call = call
        self.channel = channel
        self.released = False
        self.task = asyncio.get_running_loop().create_task(self._hold())

    async def _hold(self) -> None:
        """The lease call ends after a release; `moved` or a failure first means the slot is gone."""
        try:
            async for item in self.call:
                if isinstance(item, LeaseEnd) and item.reason == EndReason.MOVED.value:
                    self.channel.end(EndReason.MOVED, "the model replica is draining")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self.released:
                self.channel.end(EndReason.LOST, f"the model replica failed ({type(exc).__name__})")

    def abandon(self) -> None:
        """The slot is gone on the replica's side: stop following this lease."""
        self.released = True
        self.channel.close()
        self.call.cancel()  # type: ignore[no-untyped-call]
        self.task.cancel()

    async def release(self) -> None:
        self.released = True
        self.channel.close()  # the replica frees the slot and ends the lease call
        try:
            await asyncio.wait_for(asyncio.shield(self.task), LEASE_END_TIMEOUT_S)
        except BaseException as exc:
            # Too slow, or our caller is being cancelled: end the call here; a cancel still propagates.
            self.call.cancel()  # type: ignore[no-untyped-call]
            self.task.cancel()
            if not isinstance(exc, TimeoutError):
                raise


class RaySlotStream:
    """One session's slot, on whichever replica holds it now.

    The session keeps its history (serve_app/engine/history.py) as frames arrive. When its replica drains
    (`moved`) or dies (`lost`), the stream re-admits the session with that history: another replica
    rebuilds the slot, input sent meanwhile is kept and forwarded, and `frames()` goes on after a gap.
    Only when no replica has room (or the history cannot describe the session) does it raise SessionLost.
    """

    def __init__(
        self, gateway: RayGateway, session_id: str, model_id: str, lease: _Lease, moves: MoveObserver
    ) -> None:
        self._gateway = gateway
        self._session_id = session_id
        self._model_id = model_id
        self._lease = lease
        self._moves = moves
        self.text_delay_s = lease.admission.text_delay_s
        spec = lease.admission.history
        self._history = SessionHistory(spec) if spec is not None else None
        self._moving = False
        self._backlog: list[npt.NDArray[np.float32]] = []
        """Input sent while the session moves: forwarded to the new replica once it is attached."""
        self._moved: tuple[str, float, str] | None = None
        """(why, when the last frame before the move arrived, the old replica) until the first frame
        after it."""
        self._last_frame_at = time.monotonic()
        self._closed = False

    @property
    def admission(self) -> Admission:
        return self._lease.admission

    @property
    def _log(self) -> dict[str, str]:
        return {"session_id": self._session_id, "model": self._model_id, "replica": self.admission.replica_id}

    async def send_audio(self, pcm: npt.NDArray[np.float32]) -> None:
        if self._closed:
            raise SessionLost("the session is closed")
        if self._history is not None:
            self._history.add_input(pcm, time.monotonic())
        if self._moving:
            self._backlog.append(pcm)
            return
        try:
            self._lease.channel.send_audio(pcm)
        except ChannelEnded as exc:
            if not self._can_move(exc):
                raise _gateway_error(exc) from exc
            # frames() moves the session; the history holds this audio as not stepped yet

    def _can_move(self, ended: ChannelEnded) -> bool:
        return (
            ended.reason in (EndReason.LOST, EndReason.MOVED)
            and self._history is not None
            and not self._closed
        )

    async def frames(self) -> AsyncIterator[EngineFrame]:
        while True:
            replica_id = self.admission.replica_id
            try:
                async for frame in self._lease.channel.frames():
                    now = time.monotonic()
                    if self._history is not None:
                        self._history.add_records(frame.history)
                    if self._moved is not None:
                        self._moved_done(now)
                    self._last_frame_at = now
                    self._gateway.ledger.record(self._session_id, replica_id)
                    yield frame
                return
            except ChannelEnded as exc:
                if not self._can_move(exc):
                    if exc.reason is not EndReason.FELL_BEHIND:
                        logger.warning("session lost: %s", exc, extra=self._log)
                    raise _gateway_error(exc) from exc
                await self._move(exc)

    async def _move(self, ended: ChannelEnded) -> None:
        """Continue the session on another replica of the model, rebuilt from its history."""
        assert self._history is not None
        why = "drain" if ended.reason is EndReason.MOVED else "lost"
        ended_on = self.admission.replica_id
        logger.info("session moving off replica %s (%s): %s", self.admission.replica_id, why, ended,
                    extra=self._log)  # fmt: skip
        self._moving = True
        self._lease.abandon()
        try:
            window = self._history.window(time.monotonic())
            lease = await self._gateway.lease(
                self._model_id, self._session_id, resume=window, timeout_s=self._gateway.resume_timeout_s
            )
        except (HistoryLost, GatewayError) as exc:
            code = exc.code if isinstance(exc, GatewayError) else "history_lost"
            self._moves.session_move_failed(self._model_id, code)
            logger.warning("session could not move (%s): %s", code, exc, extra=self._log)
            lost = f"the model replica went away and the session could not continue: {exc}"
            raise SessionLost(lost) from exc
        finally:
            self._moving = False
        if self._closed:  # the session ended while it moved
            await lease.release()
            return
        self._lease = lease
        for pcm in self._backlog:
            lease.channel.send_audio(pcm)
        self._backlog.clear()
        self._moved = (why, self._last_frame_at, ended_on)
        logger.info(
            "session resumed on replica %s from %.1f s of history (%d steps, %.2f s pending)",
            lease.admission.replica_id,
            window.seconds,
            window.steps,
            window.pending.size / SAMPLE_RATE,
            extra=self._log,
        )

    def _moved_done(self, now: float) -> None:
        assert self._moved is not None
        why, since, old = self._moved
        self._moved = None
        gap = now - since
        self._moves.session_moved(self._model_id, why, gap)
        move = {"reason": why, "from": old, "to": self.admission.replica_id, "gap_s": gap}
        self._gateway.ledger.record_move(self._session_id, move)
        logger.info("session moved (%s): output gap %.0f ms", why, 1000 * gap, extra=self._log)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._lease.release()


class RayGateway:
    """Admits sessions onto model deployments; one per ingress replica."""

    def __init__(
        self,
        models: Mapping[str, DeploymentHandle[Any]],
        node_id: str,
        deployment_status: Callable[[], Mapping[str, bool]],
        admission_timeout_s: float = DEFAULT_ADMISSION_TIMEOUT_S,
        moves: MoveObserver | None = None,
    ) -> None:
        self._models = dict(models)
        self._streams = {mid: h.options(stream=True) for mid, h in self._models.items()}
        self._channels = ChannelPool(node_id)
        self._deployment_status = deployment_status
        self.admission_timeout_s = admission_timeout_s
        self.resume_timeout_s = DEFAULT_RESUME_TIMEOUT_S
        self._moves: MoveObserver = moves or _NoMoves()
        self.ledger = SessionLedger()
        self._capacity: dict[str, dict[str, Any]] = {}
        """model id → replica id → its latest capacity report (from admissions)."""

    def model_ids(self) -> list[str]:
        return list(self._models)

    async def is_ready(self) -> bool:
        """True while every model deployment has a running replica.

        Serve marks a replica running only after its constructor (load + warm-up) returned.
        """
        running = await asyncio.to_thread(self._deployment_status)
        return all(running.get(mid, False) for mid in self._models)

    def status(self) -> dict[str, Any]:
        """What this ingress knows of each model's replicas: capacity as last reported, sessions here."""
        here: dict[str, int] = {c.replica_id: c.sessions for c in self._channels.channels()}
        return {
            mid: {
                rid: {**report, "sessions_from_this_ingress": here.get(rid, 0)}
                for rid, report in self._capacity.get(mid, {}).items()
            }
            for mid in self._models
        }

    async def open_session(self, model_id: str, session_id: str) -> RaySlotStream:
        lease = await self.lease(model_id, session_id)
        return RaySlotStream(self, session_id, model_id, lease, self._moves)

    async def lease(
        self,
        model_id: str,
        session_id: str,
        *,
        resume: ResumeWindow | None = None,
        timeout_s: float | None = None,
    ) -> _Lease:
        """Admit a session on a replica with room and attach to its channel. With `resume`, the session
        continues from a replica that drained or died: calls that reach a dead replica are retried (Serve
        may route to it until it notices) and any refusal is retried until the timeout."""
        handle = self._streams.get(model_id)
        if handle is None:
            raise ModelNotFound(model_id)
        log = {"session_id": session_id, "model": model_id}
        started = time.monotonic()
        deadline = started + (self.admission_timeout_s if timeout_s is None else timeout_s)
        attempts = 0
        while True:
            attempts += 1
            call = (
                handle.session_stream.remote(session_id)
                if resume is None
                else handle.session_stream.remote(session_id, resume)
            )
            assert isinstance(call, DeploymentResponseGenerator)
            try:
                admission = await self._admission(call, model_id, deadline, log)
            except NoCapacity:
                raise
            except GatewayError:
                if resume is None or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(RESUME_RETRY_S)  # a dead replica still routed to
                continue
            if admission.admitted:
                break
            logger.info("replica %s refused: %s", admission.replica_id, admission.refusal, extra=log)
            if time.monotonic() >= deadline or (resume is None and attempts >= ADMISSION_ATTEMPTS):
                raise NoCapacity(model_id)
            if resume is not None:
                await asyncio.sleep(RESUME_RETRY_S)
        assert admission.channel is not None
        try:
            channel = await self._channels.get(admission.replica_id, admission.channel)
            session = channel.attach(admission.lease_id)
        except (ConnectionError, ChannelEnded) as exc:
            call.cancel()  # type: ignore[no-untyped-call]
            raise SessionLost(f"cannot reach the model replica's channel: {exc}") from exc
        logger.info(
            "session %s replica %s slot %s in %.0f ms",
            "resumed on" if resume is not None else "admitted to",
            admission.replica_id,
            admission.slot,
            1000 * (time.monotonic() - started),
            extra=log,
        )
        return _Lease(admission, call, session)

    async def _admission(
        self, call: DeploymentResponseGenerator[Any], model_id: str, deadline: float, log: dict[str, str]
    ) -> Admission:
        try:
            first = await asyncio.wait_for(anext(call), timeout=max(0.0, deadline - time.monotonic()))
        except BaseException as exc:
            call.cancel()  # type: ignore[no-untyped-call]
            if isinstance(exc, TimeoutError | BackPressureError):
                logger.info("no replica with a free slot", extra=log)
                raise NoCapacity(model_id) from exc
            if isinstance(exc, Exception):
                raise GatewayError(f"could not reach model {model_id}: {type(exc).__name__}") from exc
            raise
        if not isinstance(first, Admission):
            call.cancel()  # type: ignore[no-untyped-call]
            raise GatewayError(f"model {model_id} answered {type(first).__name__}, not an admission")
        if first.capacity is not None:
            self._capacity.setdefault(model_id, {})[first.replica_id] = asdict(first.capacity)
        if not first.admitted:
            with contextlib.suppress(Exception):
                await call.__anext__()  # let the refused call finish on its own (nothing more comes)
        return first

    async def close(self) -> None:
        await self._channels.close()
