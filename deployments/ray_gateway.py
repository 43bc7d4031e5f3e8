"""ModelGateway over Ray: a session is one streaming handle call to a model replica, input via an inbox.

Routing happens once, when the call is made; every frame afterwards rides the same call, so a session
cannot move to another replica. When that replica dies the call raises, and the session is reported
lost — never re-opened elsewhere without its state.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from deployments.wire import Admission, ServedFrame
from serve_app.engine.port import EngineFrame
from serve_app.server.gateway import GatewayError, ModelNotFound, NoCapacity, SessionLost

logger = logging.getLogger("ray.serve")

DEFAULT_ADMISSION_TIMEOUT_S = 1.0
"""How long a new session may wait for a replica with a free slot. Serve routes a call only to a replica
below `max_ongoing_requests` (= slots) and otherwise queues it at the caller indefinitely; a session
still waiting after this long finds every replica full, so it is refused instead of hanging."""

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


class RaySlotStream:
    """One session's slot on one model replica, reached through Ray."""

    def __init__(
        self,
        session_id: str,
        model_id: str,
        admission: Admission,
        call: DeploymentResponseGenerator[Any],
        inbox: Any,
        ledger: SessionLedger,
    ) -> None:
        self._session_id = session_id
        self._model_id = model_id
        self.admission = admission
        self._call = call
        self._inbox = inbox
        self._ledger = ledger
        self._closed = False
        self._log = {"session_id": session_id, "model": model_id, "replica": admission.replica_id}

    async def send_audio(self, pcm: npt.NDArray[np.float32]) -> None:
        if self._closed:
            raise SessionLost("the session is closed")
        try:
            accepted = await self._inbox.put.remote(self._session_id, pcm)
        except Exception as exc:
            raise SessionLost(f"the session's input channel failed: {exc}") from exc
        if not accepted:
            raise SessionLost("the model replica stopped reading this session's audio")

    async def frames(self) -> AsyncIterator[EngineFrame]:
        try:
            async for item in self._call:
                if not isinstance(item, ServedFrame) or item.replica_id != self.admission.replica_id:
                    # Cannot happen with one call per session; refuse rather than mix two states.
                    raise SessionLost(
                        f"frame from replica {getattr(item, 'replica_id', '?')} in this session"
                    )
                self._ledger.record(self._session_id, item.replica_id)
                yield item.frame
        except (asyncio.CancelledError, GatewayError):
            raise
        except Exception as exc:
            if self._closed:
                return  # our own close cancelled the call
            logger.warning("model replica lost: %s", type(exc).__name__, extra=self._log)
            raise SessionLost(
                f"the model replica serving this session failed ({type(exc).__name__})"
            ) from exc
        if not self._closed:
            logger.warning("model replica ended the session", extra=self._log)
            raise SessionLost("the model replica ended this session")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Closing the inbox ends the replica's reader, which frees the slot and ends the call; the
        # cancel covers a replica that is not reading right now.
        with contextlib.suppress(Exception):
            await self._inbox.close.remote(self._session_id)
        self._call.cancel()  # type: ignore[no-untyped-call]


class RayGateway:
    """Admits sessions onto model deployments; one per ingress replica."""

    def __init__(
        self,
        models: Mapping[str, DeploymentHandle[Any]],
        inbox: Any,
        deployment_status: Callable[[], Mapping[str, bool]],
        admission_timeout_s: float = DEFAULT_ADMISSION_TIMEOUT_S,
    ) -> None:
        self._models = dict(models)
        self._streams = {mid: h.options(stream=True) for mid, h in self._models.items()}
        self._inbox = inbox
        self._deployment_status = deployment_status
        self.admission_timeout_s = admission_timeout_s
        self.ledger = SessionLedger()

    def model_ids(self) -> list[str]:
        return list(self._models)

    async def is_ready(self) -> bool:
        """True while every model deployment has a running replica.

        Serve marks a replica running only after its constructor (load + warm-up) returned.
        """
        running = await asyncio.to_thread(self._deployment_status)
        return all(running.get(mid, False) for mid in self._models)

    async def open_session(self, model_id: str, session_id: str) -> RaySlotStream:
        handle = self._streams.get(model_id)
        if handle is None:
            raise ModelNotFound(model_id)
        log = {"session_id": session_id, "model": model_id}
        started = time.monotonic()
        try:
            await self._inbox.open.remote(session_id)
        except Exception as exc:
            raise GatewayError(f"the session input channel failed: {type(exc).__name__}") from exc
        call = handle.session_stream.remote(session_id, self._inbox)
        assert isinstance(call, DeploymentResponseGenerator)
        try:
            first = await asyncio.wait_for(anext(call), timeout=self.admission_timeout_s)
        except BaseException as exc:
            call.cancel()  # type: ignore[no-untyped-call]
            with contextlib.suppress(Exception):
                await self._inbox.close.remote(session_id)
            if isinstance(exc, TimeoutError | BackPressureError):
                logger.info("no replica with a free slot", extra=log)
                raise NoCapacity(model_id) from exc
            if isinstance(exc, Exception):
                raise GatewayError(f"could not reach model {model_id}: {type(exc).__name__}") from exc
            raise
        if not isinstance(first, Admission) or not first.admitted:
            with contextlib.suppress(Exception):
                await self._inbox.close.remote(session_id)
            raise NoCapacity(model_id)
        logger.info(
            "session admitted to replica %s slot %s in %.0f ms",
            first.replica_id,
            first.slot,
            1000 * (time.monotonic() - started),
            extra=log,
        )
        return RaySlotStream(session_id, model_id, first, call, self._inbox, self.ledger)
