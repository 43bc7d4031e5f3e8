"""ModelGateway over Ray: a session is one lease call to a model replica; its audio rides the frame channel.

Routing happens once, when the lease call is made; the admission names the replica's channel, and all
of this ingress's sessions on that replica share one connection to it. This module only adapts Serve to
the transport: `RayGateway.place` is the `Placer` (lease calls through Serve handles, retried as Serve's
routing needs) and `RayPlacement` the `Placement` (it follows the lease call for `moved` or a failure).
What a session does when its replica drains or dies is the move logic's (serve_app/transport/
session_move.py): it is re-admitted elsewhere with the history it kept, or reported lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ray.serve import context as serve_context
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from deployments.wire import Admission, LeaseEnd
from serve_app.config import NO_PROMPT, ModelTraits
from serve_app.engine.history import HistorySpec, ResumeWindow
from serve_app.server.gateway import GatewayError, ModelNotFound, NoCapacity, SessionLost
from serve_app.server.replica_reports import ReplicaReports, ReportEvent
from serve_app.transport.ingress_channel import ChannelEnded, ChannelSession
from serve_app.transport.ledger import SessionLedger
from serve_app.transport.pool import ChannelPool
from serve_app.transport.reasons import EndReason
from serve_app.transport.session_move import DEFAULT_RESUME_TIMEOUT_S, MoveObserver, MovingSlotStream

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
RESUME_RETRY_S = 0.1
"""A resumed session's next lease call after one that reached a dead replica or a refusal."""


@contextlib.contextmanager
def _detached_from_the_socket_request() -> Iterator[None]:
    """Make the lease call outlive Serve's cancellation of the WebSocket request it was made in.

    Serve cancels an ingress request's child calls the moment the socket's request ends, before the
    session's own clean-up runs: the replica's generator would then free the slot without its `LeaseEnd`
    (the capacity report `/v1/status` keeps). The session releases its lease itself in every case (and a
    lost ingress connection releases it on the replica), so the call is made outside that tracking.
    """
    current = serve_context._get_serve_request_context()
    token = serve_context._serve_request_context.set(
        dataclasses.replace(current, cancel_on_parent_request_cancel=False)  # type: ignore[arg-type]
    )
    try:
        yield
    finally:
        serve_context._serve_request_context.reset(token)


class RayPlacement:
    """One admission of a session on one replica over Ray (a `Placement`): the lease call to the replica
    and the session's share of its channel."""

    def __init__(
        self,
        admission: Admission,
        call: DeploymentResponseGenerator[Any],
        channel: ChannelSession,
        on_end: Callable[[LeaseEnd], None] | None = None,
    ) -> None:
        self.admission = admission
        self.call = call
        self._channel = channel
        self._on_end = on_end
        self.released = False
        self.task = asyncio.get_running_loop().create_task(self._hold())

    @property
    def replica_id(self) -> str:
        return self.admission.replica_id

    @property
    def text_delay_s(self) -> float:
        return self.admission.text_delay_s

    @property
    def history(self) -> HistorySpec | None:
        return self.admission.history

    @property
    def channel(self) -> ChannelSession:
        return self._channel

    async def _hold(self) -> None:
        """The lease call ends after a release; `moved` or a failure first means the slot is gone."""
        try:
            async for item in self.call:
                if not isinstance(item, LeaseEnd):
                    continue
                if self._on_end is not None:
                    self._on_end(item)
                if item.reason == EndReason.MOVED.value:
                    self._channel.end(EndReason.MOVED, "the model replica is draining")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self.released:
                self._channel.end(EndReason.LOST, f"the model replica failed ({type(exc).__name__})")

    def abandon(self) -> None:
        self.released = True
        self._channel.close()
        self.call.cancel()  # type: ignore[no-untyped-call]
        self.task.cancel()

    async def release(self) -> None:
        self.released = True
        self._channel.close()  # the replica frees the slot and ends the lease call
        try:
            await asyncio.wait_for(asyncio.shield(self.task), LEASE_END_TIMEOUT_S)
        except BaseException as exc:
            # Too slow, or our caller is being cancelled: end the call here; a cancel still propagates.
            self.call.cancel()  # type: ignore[no-untyped-call]
            self.task.cancel()
            if not isinstance(exc, TimeoutError):
                raise


class RayGateway:
    """Admits sessions onto model deployments; one per ingress replica."""

    def __init__(
        self,
        models: Mapping[str, DeploymentHandle[Any]],
        node_id: str,
        deployment_status: Callable[[], Mapping[str, bool]],
        admission_timeout_s: float = DEFAULT_ADMISSION_TIMEOUT_S,
        moves: MoveObserver | None = None,
        traits: Mapping[str, ModelTraits] | None = None,
    ) -> None:
        """`traits`: per model, as configured (serve_app/config.py `model_traits`); a model without them
        takes no persona (a streaming ASR's slots)."""
        self._models = dict(models)
        self._traits = {mid: (traits or {}).get(mid, NO_PROMPT) for mid in self._models}
        self._streams = {mid: h.options(stream=True) for mid, h in self._models.items()}
        self._channels = ChannelPool(node_id)
        self._deployment_status = deployment_status
        self.admission_timeout_s = admission_timeout_s
        self.resume_timeout_s = DEFAULT_RESUME_TIMEOUT_S
        self._moves = moves
        self.ledger = SessionLedger()
        self.reports = ReplicaReports()
        """model id → replica id → its latest capacity report (admissions, refusals, lease ends)."""

    def model_ids(self) -> list[str]:
        return list(self._models)

    def traits(self, model_id: str) -> ModelTraits:
        traits = self._traits.get(model_id)
        if traits is None:
            raise ModelNotFound(model_id)
        return traits

    async def is_ready(self) -> bool:
        """True while every model deployment has a running replica.

        Serve marks a replica running only after its constructor (load + warm-up) returned.
        """
        running = await asyncio.to_thread(self._deployment_status)
        return all(running.get(mid, False) for mid in self._models)

    def status(self) -> dict[str, Any]:
        """What this ingress knows of each model's replicas: capacity as last reported (with its age),
        sessions here."""
        here: dict[str, int] = {c.replica_id: c.sessions for c in self._channels.channels()}
        return self.reports.snapshot(self._models, here)

    async def open_session(self, model_id: str, session_id: str) -> MovingSlotStream:
        placement = await self.place(model_id, session_id)
        return MovingSlotStream(
            self,
            session_id,
            model_id,
            placement,
            moves=self._moves,
            ledger=self.ledger,
            resume_timeout_s=self.resume_timeout_s,
            logger=logger,
            traits=self._traits[model_id],
        )

    async def place(
        self,
        model_id: str,
        session_id: str,
        *,
        resume: ResumeWindow | None = None,
        timeout_s: float | None = None,
    ) -> RayPlacement:
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
            with _detached_from_the_socket_request():
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
            # Each attempt at DEBUG: the socket logs the refusal once, with this reason (app.py).
            logger.debug("replica %s refused: %s", admission.replica_id, admission.refusal, extra=log)
            if time.monotonic() >= deadline or (resume is None and attempts >= ADMISSION_ATTEMPTS):
                raise NoCapacity(f"{model_id}: {attempts} replica call(s) refused, last: {admission.refusal}")
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
        on_end = self._lease_ended(model_id, admission.replica_id)
        return RayPlacement(admission, call, session, on_end)

    def _lease_ended(self, model_id: str, replica_id: str) -> Callable[[LeaseEnd], None]:
        def on_end(end: LeaseEnd) -> None:
            if end.capacity is not None:
                self.reports.record(model_id, replica_id, end.capacity, "session_end")

        return on_end

    async def _admission(
        self, call: DeploymentResponseGenerator[Any], model_id: str, deadline: float, log: dict[str, str]
    ) -> Admission:
        try:
            first = await asyncio.wait_for(anext(call), timeout=max(0.0, deadline - time.monotonic()))
        except BaseException as exc:
            call.cancel()  # type: ignore[no-untyped-call]
            if isinstance(exc, TimeoutError | BackPressureError):
                raise NoCapacity(f"{model_id}: no replica with a free slot in time") from exc
            if isinstance(exc, Exception):
                raise GatewayError(f"could not reach model {model_id}: {type(exc).__name__}") from exc
            raise
        if not isinstance(first, Admission):
            call.cancel()  # type: ignore[no-untyped-call]
            raise GatewayError(f"model {model_id} answered {type(first).__name__}, not an admission")
        if first.capacity is not None:
            event: ReportEvent = "admission" if first.admitted else "refusal"
            self.reports.record(model_id, first.replica_id, first.capacity, event)
        if not first.admitted:
            with contextlib.suppress(Exception):
                await call.__anext__()  # let the refused call finish on its own (nothing more comes)
        return first

    async def close(self) -> None:
        await self._channels.close()
