"""Model deployment: one class, bound once per configured model type (deployment name = model id).

A replica hosts one BatchedEngine driven by a ClockedRunner thread; each session is one long-lived
streaming call to `session_stream`, so routing happens once and the session stays on this replica for
its whole life. `max_ongoing_requests` = slots, so Serve only routes a session to a replica with a
free slot; the first item the stream yields is the admission verdict.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import ray
from ray import serve
from ray.serve import Deployment

from deployments.metrics import ModelMetrics
from deployments.wire import Admission, ServedFrame
from serve_app.config import ModelConfig

if TYPE_CHECKING:
    from serve_app.engine.runner import ClockedRunner, TickStats
    from serve_app.server.local_gateway import RunnerSlotStream

logger = logging.getLogger("ray.serve")

METRICS_FLUSH_S = 1.0
"""How often tick statistics gathered on the runner thread are exported from the replica's loop."""


class UnknownSession(LookupError):
    """Input for a session this replica does not hold: its state is not here, so it must not be fed."""


class ModelReplica:
    # Serve awaits an async constructor; mypy only knows plain ones.
    async def __init__(self, model: dict[str, Any]) -> None:  # type: ignore[misc]
        self._config = ModelConfig.model_validate(model)
        self._model_id = self._config.id
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._actor_name = ray.get_runtime_context().get_actor_name() or ""
        self._log = {"model": self._model_id, "replica": self._replica_id}
        self._ticks: collections.deque[TickStats] = collections.deque(maxlen=10_000)
        self._sessions: dict[str, RunnerSlotStream] = {}
        self._metrics = ModelMetrics(self._model_id)
        # Loading and warm-up take seconds to minutes: off the loop, before Serve marks us running.
        self._runner: ClockedRunner = await asyncio.to_thread(self._start_runner)
        self._metrics.record_slots(0, self._runner.slots_total, 0)
        self._flusher = asyncio.get_running_loop().create_task(self._flush_metrics())
        logger.info("model replica ready (%d slots)", self._runner.slots_total, extra=self._log)

    def _start_runner(self) -> ClockedRunner:
        from serve_app.server.local_gateway import start_runner

        return start_runner(self._config, on_tick=self._ticks.append)

    async def session_stream(self, session_id: str, inbox: Any) -> AsyncIterator[Admission | ServedFrame]:
        """Admit the session into a free slot and stream its output frames until it ends.

        Audio comes from `inbox` (the caller's SessionInbox actor). The stream ends when the caller
        closes the session in the inbox or cancels the call; the slot is freed in every case.
        """
        from serve_app.engine.batch import NoFreeSlot
        from serve_app.server.local_gateway import RunnerSlotStream

        log = {**self._log, "session_id": session_id}
        try:
            stream = RunnerSlotStream.open(self._runner)
        except NoFreeSlot:
            self._metrics.admissions_refused.inc()
            logger.warning("no free slot for session", extra=log)
            yield Admission(self._replica_id, self._actor_name, slot=None)
            return
        self._sessions[session_id] = stream
        self._metrics.sessions_served.inc()
        self._record_slots()
        feeder = asyncio.create_task(self._feed(session_id, stream, inbox))
        logger.info("session admitted to slot %d", stream.slot, extra=log)
        try:
            yield Admission(self._replica_id, self._actor_name, slot=stream.slot)
            async for frame in stream.frames():
                yield ServedFrame(self._replica_id, frame)
        finally:
            feeder.cancel()
            with contextlib.suppress(BaseException):
                await feeder
            await stream.close()
            del self._sessions[session_id]
            self._record_slots()
            logger.info("session left its slot", extra=log)

    async def _feed(self, session_id: str, stream: RunnerSlotStream, inbox: Any) -> None:
        """Pump the session's audio from the inbox into its slot; ending it ends the session."""
        try:
            while (chunks := await inbox.take.remote(session_id)) is not None:
                for pcm in chunks:
                    await self.push(session_id, pcm)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The ingress (and its inbox) died or the slot broke: nobody can talk to this session.
            logger.warning(
                "session input failed", exc_info=True, extra={**self._log, "session_id": session_id}
            )
        finally:
            await stream.close()

    async def push(self, session_id: str, pcm: npt.NDArray[np.float32]) -> None:
        stream = self._sessions.get(session_id)
        if stream is None:
            raise UnknownSession(session_id)
        await stream.send_audio(pcm)

    def _record_slots(self) -> None:
        self._metrics.record_slots(self._runner.slots_used, self._runner.slots_total, len(self._sessions))

    async def _flush_metrics(self) -> None:
        while True:
            await asyncio.sleep(METRICS_FLUSH_S)
            ticks = [self._ticks.popleft() for _ in range(len(self._ticks))]
            self._metrics.record_ticks(ticks)
            self._record_slots()

    def check_health(self) -> None:
        if not self._runner.running:
            raise RuntimeError("the engine's clock thread stopped")

    def __del__(self) -> None:
        runner = getattr(self, "_runner", None)
        if runner is not None:
            runner.stop()


ModelDeployment: Deployment = serve.deployment(
    max_ongoing_requests=8,  # build_app sets it to the model's slots
    graceful_shutdown_timeout_s=300,
    # Enough for the embedded tiny checkpoints (`serve run serve_app.app:app` on a 2-core machine); the
    # Serve YAML sets real values (num_gpus: 1 in production).
    ray_actor_options={"num_cpus": 0.5, "num_gpus": 0},
)(ModelReplica)
