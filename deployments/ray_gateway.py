"""ModelGateway over Ray: a session is one lease call to a model replica; its audio rides the frame channel.

Routing happens once, when the lease call is made; the admission names the replica's channel, and all
of this ingress's sessions on that replica share one connection to it. When the replica dies, both the
connection and the lease call fail, and exactly the sessions it held are reported lost — never
re-opened elsewhere without their state.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import numpy.typing as npt
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from deployments.wire import Admission
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

LEDGER_SESSIONS = 4096


class SessionLedger:
    """Which replicas served each recent session, frame by frame (bounded; for operators and tests)."""

    def __init__(self, capacity: int = LEDGER_SESSIONS) -> None:
        self._capacity = capacity
        self._served: collections.OrderedDict[str, dict[str, int]] = collections.OrderedDict()

    def record(self, session_id: str, replica_id: str) -> None:
        counts = self._served.get(session_id)
        if counts is None:
            counts = self._served[session_id] = {}
            while len(self._served) > self._capacity:
                self._served.popitem(last=False)
        counts[replica_id] = counts.get(replica_id, 0) + 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {sid: dict(counts) for sid, counts in self._served.items()}


def _gateway_error(ended: ChannelEnded) -> GatewayError:
    if ended.reason is EndReason.FELL_BEHIND:
        return SessionFellBehind(ended.detail)
    return SessionLost(ended.detail or ended.reason.value)


class RaySlotStream:
    """One session's slot on one model replica: its lease call plus its share of the replica's channel."""

    def __init__(
        self,
        session_id: str,
        model_id: str,
        admission: Admission,
        call: DeploymentResponseGenerator[Any],
        channel: ChannelSession,
        ledger: SessionLedger,
    ) -> None:
        self._session_id = session_id
        self.admission = admission
        self.text_delay_s = admission.text_delay_s
        self._call = call
        self._channel = channel
        self._ledger = ledger
        self._closed = False
        self._log = {"session_id": session_id, "model": model_id, "replica": admission.replica_id}
        self._lease = asyncio.get_running_loop().create_task(self._hold_lease())

    async def _hold_lease(self) -> None:
        """The lease call ends after a release; if it raises first, the replica is gone."""
        try:
            async for _ in self._call:
                pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._closed:
                logger.warning("model replica lost: %s", type(exc).__name__, extra=self._log)
                self._channel.end(EndReason.LOST, f"the model replica failed ({type(exc).__name__})")

    async def send_audio(self, pcm: npt.NDArray[np.float32]) -> None:
        if self._closed:
            raise SessionLost("the session is closed")
        try:
            self._channel.send_audio(pcm)
        except ChannelEnded as exc:
            raise _gateway_error(exc) from exc

    async def frames(self) -> AsyncIterator[EngineFrame]:
        replica_id = self.admission.replica_id
        try:
            async for frame in self._channel.frames():
                self._ledger.record(self._session_id, replica_id)
                yield frame
        except ChannelEnded as exc:
            if exc.reason is not EndReason.FELL_BEHIND:
                logger.warning("session lost: %s", exc, extra=self._log)
            raise _gateway_error(exc) from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._channel.close()  # the replica frees the slot and ends the lease call
        try:
            await asyncio.wait_for(asyncio.shield(self._lease), LEASE_END_TIMEOUT_S)
        except BaseException as exc:
            # Too slow, or our caller is being cancelled: end the call here; a cancel still propagates.
            self._call.cancel()  # type: ignore[no-untyped-call]
            self._lease.cancel()
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
    ) -> None:
        self._models = dict(models)
        self._streams = {mid: h.options(stream=True) for mid, h in self._models.items()}
        self._channels = ChannelPool(node_id)
        self._deployment_status = deployment_status
        self.admission_timeout_s = admission_timeout_s
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
        handle = self._streams.get(model_id)
        if handle is None:
            raise ModelNotFound(model_id)
        log = {"session_id": session_id, "model": model_id}
        started = time.monotonic()
        deadline = started + self.admission_timeout_s
        for _ in range(ADMISSION_ATTEMPTS):
            call = handle.session_stream.remote(session_id)
            assert isinstance(call, DeploymentResponseGenerator)
            admission = await self._admission(call, model_id, deadline, log)
            if admission.admitted:
                break
            logger.info("replica %s refused: %s", admission.replica_id, admission.refusal, extra=log)
            if time.monotonic() >= deadline:
                raise NoCapacity(model_id)
        else:
            raise NoCapacity(model_id)
        assert admission.channel is not None
        try:
            channel = await self._channels.get(admission.replica_id, admission.channel)
            session = channel.attach(admission.lease_id)
        except (ConnectionError, ChannelEnded) as exc:
            call.cancel()  # type: ignore[no-untyped-call]
            raise SessionLost(f"cannot reach the model replica's channel: {exc}") from exc
        logger.info(
            "session admitted to replica %s slot %s in %.0f ms",
            admission.replica_id,
            admission.slot,
            1000 * (time.monotonic() - started),
            extra=log,
        )
        return RaySlotStream(session_id, model_id, admission, call, session, self.ledger)

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
