"""Model deployment: one class, bound once per configured model type (deployment name = model id).

A replica hosts one BatchedEngine driven by a ClockedRunner thread and a ReplicaPort (the frame
channel's replica end). Each session is one long-lived lease call to `session_stream`: Serve routes it
once, counts it against `max_ongoing_requests` (= slots), autoscales on it and lets it finish on drain.
The lease carries no audio; frames for all of an ingress's sessions travel on one channel connection.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import ray
from ray import serve
from ray.serve import Deployment

from deployments.metrics import ModelMetrics
from deployments.wire import Admission, LeaseEnd
from serve_app.config import ModelConfig
from serve_app.engine.capacity import AdmissionGate

if TYPE_CHECKING:
    from serve_app.engine.runner import ClockedRunner, TickStats
    from serve_app.transport.address import ChannelAddress
    from serve_app.transport.replica_port import ReplicaPort

logger = logging.getLogger("ray.serve")

TICK_WINDOW = 20_000
"""Tick durations kept for `tick_durations` (≈ 27 min of ticks at 12.5 per second)."""
METRICS_FLUSH_S = 1.0
"""How often tick statistics gathered on the runner thread are exported from the replica's loop."""
CHANNEL_HOST_ENV = "MOSHI_REALTIME_CHANNEL_HOST"
CHANNEL_PORT_ENV = "MOSHI_REALTIME_CHANNEL_PORT"


class ModelReplica:
    # Serve awaits an async constructor; mypy only knows plain ones.
    async def __init__(self, model: dict[str, Any]) -> None:  # type: ignore[misc]
        from serve_app.transport.replica_port import ReplicaPort

        self._config = ModelConfig.model_validate(model)
        self._model_id = self._config.id
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._actor_name = ray.get_runtime_context().get_actor_name() or ""
        self._log = {"model": self._model_id, "replica": self._replica_id}
        self._ticks: collections.deque[TickStats] = collections.deque(maxlen=10_000)
        self._recent_ticks: collections.deque[float] = collections.deque(maxlen=TICK_WINDOW)
        self._metrics = ModelMetrics(self._model_id)
        # Loading and warm-up take seconds to minutes: off the loop, before Serve marks us running.
        self._runner: ClockedRunner = await asyncio.to_thread(self._start_runner)
        self._port: ReplicaPort = ReplicaPort(
            self._runner, self._replica_id, ray.get_runtime_context().get_node_id()
        )
        self._gate = AdmissionGate(self._runner.capacity)
        # Same-node ingresses use the Unix socket; TCP (on the node's address) serves the other nodes.
        host = os.environ.get(CHANNEL_HOST_ENV) or ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        self._address: ChannelAddress = await self._port.start(host, int(os.environ.get(CHANNEL_PORT_ENV, 0)))
        self._record_slots()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_metrics())
        logger.info("model replica ready (%d slots)", self._runner.slots_total, extra=self._log)

    def _start_runner(self) -> ClockedRunner:
        from serve_app.engine.startup import start_runner

        # `slots: auto` on a CPU sizes the engine to this replica's share of a core.
        share = ray.get_runtime_context().get_assigned_resources().get("CPU")  # type: ignore[no-untyped-call]
        return start_runner(**self._config.runner_options(), on_tick=self._ticks.append, cpu_share=share)

    async def session_stream(self, session_id: str) -> AsyncIterator[Admission | LeaseEnd]:
        """The session's lease: admit it into a slot, yield the admission, hold until the lease ends.

        The lease ends when the ingress releases it on the channel, the channel connection drops, the
        slot fails or falls behind, or the caller cancels this call; the slot is freed in every case.
        """
        from serve_app.engine.errors import NoFreeSlot

        log = {**self._log, "session_id": session_id}
        try:
            lease = await self._gate.admit(lambda: self._port.lease(session_id))
        except NoFreeSlot as exc:
            self._metrics.admissions_refused.inc()
            logger.info("session refused: %s", exc, extra=log)
            yield Admission(
                self._replica_id,
                self._actor_name,
                slot=None,
                capacity=self._runner.capacity(),
                refusal=str(exc),
            )
            return
        self._metrics.sessions_served.inc()
        self._record_slots()
        try:
            yield Admission(
                self._replica_id,
                self._actor_name,
                slot=lease.slot,
                lease_id=lease.id,
                channel=self._address,
                capacity=self._runner.capacity(),
            )
            reason = await asyncio.shield(lease.ended)
            yield LeaseEnd(reason.value)
        finally:
            self._port.release(lease.id)
            self._record_slots()

    def channel(self) -> tuple[str, ChannelAddress]:
        """For tests and operators: this replica's id and where its frame channel listens."""
        return self._replica_id, self._address

    def engine_thread(self) -> tuple[int, int | None]:
        """(process id, OS thread id of the engine clock): benchmarks split engine from transport CPU."""
        return os.getpid(), self._runner.native_thread_id

    def tick_durations(self) -> list[float]:
        """Durations (s) of the ticks that stepped a slot since the last call: benchmarks follow the tick
        over time (the soak); the metrics export only histograms of them."""
        durations = list(self._recent_ticks)
        self._recent_ticks.clear()
        return durations

    def _record_slots(self) -> None:
        self._metrics.record_slots(self._runner.slots_used, self._runner.slots_total, self._port.sessions)

    async def _flush_metrics(self) -> None:
        while True:
            await asyncio.sleep(METRICS_FLUSH_S)
            ticks = [self._ticks.popleft() for _ in range(len(self._ticks))]
            self._metrics.record_ticks(ticks)
            self._recent_ticks.extend(t.duration_s for t in ticks if t.stepped_slots)
            self._metrics.record_capacity(self._runner.capacity())
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
    # Enough for the embedded tiny checkpoints (`serve run deployments.app:app` on a 2-core machine); the
    # Serve YAML sets real values (num_gpus: 1 in production).
    ray_actor_options={"num_cpus": 0.5, "num_gpus": 0},
)(ModelReplica)
