"""What a replica does to host engine slots: the engine's clock, the frame channel, leases, slot metrics.

A model replica is one `SlotHost`; the ASR replica holds one for its streaming backend (Kyutai STT). Each
session is one long-lived lease call to the replica's `session_stream`: Serve routes it once, counts it
against `max_ongoing_requests`, autoscales on it and lets it finish on drain. The lease carries no audio;
frames for all of an ingress's sessions travel on one channel connection.

A draining replica does not wait out `graceful_shutdown_timeout_s`: once Serve marks it STOPPING (which
`DrainWatch` sees), it tells each session's ingress to move; the ingress resumes the session on another
replica, whose lease call carries the session's kept history (`resume`) to rebuild the slot from.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import ray
from ray import serve

from deployments.drain_watch import DrainWatch
from deployments.metrics import ModelMetrics
from deployments.wire import Admission, LeaseEnd
from serve_app.engine.capacity import AdmissionGate
from serve_app.engine.history import ResumeWindow
from serve_app.engine.spec import ModelConfig, ModelSpec

if TYPE_CHECKING:
    from serve_app.engine.rebuild import SlotRebuild
    from serve_app.engine.runner import ClockedRunner
    from serve_app.engine.tick_stats import TickStats
    from serve_app.transport.address import ChannelAddress
    from serve_app.transport.replica_port import ReplicaPort

logger = logging.getLogger("ray.serve")

TICK_WINDOW = 20_000
"""Tick durations kept for `tick_durations` (≈ 27 min of ticks at 12.5 per second)."""
METRICS_FLUSH_S = 1.0
"""How often tick statistics gathered on the runner thread are exported from the replica's loop."""
REFUSED_KEPT = 1024
CHANNEL_HOST_ENV = "MOSHI_REALTIME_CHANNEL_HOST"
CHANNEL_PORT_ENV = "MOSHI_REALTIME_CHANNEL_PORT"


def _cpu_defaults(spec: ModelSpec) -> None:
    """On a CPU, torch.compile only slows the warm-up (minutes on 2 cores): off unless the environment
    says otherwise, however the app was started (`make serve`, `serve run`, `serve deploy`). moshi reads
    NO_TORCH_COMPILE when it is first imported, which is after this."""
    import torch

    if spec.device == "cpu" or (spec.device == "auto" and not torch.cuda.is_available()):
        os.environ.setdefault("NO_TORCH_COMPILE", "1")


class SlotHost:
    def __init__(self, config: ModelConfig, *, text_only: bool) -> None:
        """`text_only`: the checkpoint must be a streaming recogniser (True) or a Moshi (False)."""
        self.config = config
        self._text_only = text_only
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self._actor_name = ray.get_runtime_context().get_actor_name() or ""
        self._log = {"model": config.id, "replica": self.replica_id}
        self._ticks: collections.deque[TickStats] = collections.deque(maxlen=10_000)
        self._recent_ticks: collections.deque[float] = collections.deque(maxlen=TICK_WINDOW)
        self._metrics = ModelMetrics(config.id)
        self._refused: collections.OrderedDict[str, None] = collections.OrderedDict()
        """Sessions refused lately (bounded), so a refusal logs once however often the ingress asks."""

    async def start(self) -> None:
        from serve_app.transport.replica_port import ReplicaPort

        # Loading and warm-up take seconds to minutes: off the loop, before Serve marks us running.
        self.runner: ClockedRunner = await asyncio.to_thread(self._start_runner)
        self._port: ReplicaPort = ReplicaPort(
            self.runner, self.replica_id, ray.get_runtime_context().get_node_id()
        )
        self._gate = AdmissionGate(self.runner.capacity)
        # Same-node ingresses use the Unix socket; TCP (on the node's address) serves the other nodes.
        host = os.environ.get(CHANNEL_HOST_ENV) or ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        self.address: ChannelAddress = await self._port.start(host, int(os.environ.get(CHANNEL_PORT_ENV, 0)))
        self._record_slots()
        loop = asyncio.get_running_loop()
        self._flusher = loop.create_task(self._flush_metrics())
        self._drain = DrainWatch(self.replica_id, has_sessions=lambda: self._port.sessions > 0)
        if self.runner.history_spec is not None:
            # Only slots that can be rebuilt elsewhere move; the others (streaming ASR) finish on drain.
            self._drain_task = loop.create_task(self._move_on_drain())
        logger.info("replica ready (%d slots)", self.runner.slots_total, extra=self._log)

    def _start_runner(self) -> ClockedRunner:
        _cpu_defaults(self.config.spec)
        from serve_app.engine.startup import start_runner

        # `slots: auto` on a CPU sizes the engine to this replica's share of a core.
        share = ray.get_runtime_context().get_assigned_resources().get("CPU")  # type: ignore[no-untyped-call]
        return start_runner(
            **self.config.runner_options(),
            on_tick=self._ticks.append,
            cpu_share=share,
            text_only=self._text_only,
        )

    async def session_stream(
        self, session_id: str, resume: ResumeWindow | None = None
    ) -> AsyncIterator[Admission | LeaseEnd]:
        """The session's lease: admit it into a slot, yield the admission, hold until the lease ends.

        The lease ends when the ingress releases it on the channel, the channel connection drops, the
        slot fails or falls behind, the replica drains (`moved`), or the caller cancels this call; the
        slot is freed in every case. With `resume`, the session comes from another replica: its slot is
        rebuilt from the window before it steps.
        """
        from serve_app.engine.errors import NoFreeSlot

        log = {**self._log, "session_id": session_id}
        try:
            if self._drain.stopping:
                raise NoFreeSlot("the replica is draining")
            lease = await self._gate.admit(
                lambda: self._port.lease(
                    session_id,
                    # A resumed session too: taken where it cannot keep (and regain) real time, it would
                    # only be shed later; refused, it can try another replica.
                    check_budget=True,
                    resume=resume,
                    on_rebuilt=self._rebuilt_callback(log),
                )
            )
        except NoFreeSlot as exc:
            self._metrics.admissions_refused.inc()
            # The ingress asks up to ADMISSION_ATTEMPTS times (deployments/ray_gateway.py): log the first.
            level = logging.DEBUG if session_id in self._refused else logging.INFO
            self._refused[session_id] = None
            while len(self._refused) > REFUSED_KEPT:
                self._refused.popitem(last=False)
            logger.log(level, "session refused: %s", exc, extra=log)
            yield Admission(
                self.replica_id,
                self._actor_name,
                slot=None,
                capacity=self.runner.capacity(),
                refusal=str(exc),
            )
            return
        self._metrics.sessions_served.inc()
        if resume is not None:
            self._metrics.sessions_resumed.inc()
        self._record_slots()
        try:
            yield Admission(
                self.replica_id,
                self._actor_name,
                slot=lease.slot,
                lease_id=lease.id,
                channel=self.address,
                capacity=self.runner.capacity(),
                text_delay_s=self.runner.text_delay_s,
                history=self.runner.history_spec,
            )
            reason = await asyncio.shield(lease.ended)
            # `ended` is set once the port has freed the slot: this report shows the replica without the
            # session, which is what the ingress's /v1/status keeps until the next admission.
            self._record_slots()
            yield LeaseEnd(reason.value, self.runner.capacity())
        finally:
            self._port.release(lease.id)
            self._record_slots()

    def _rebuilt_callback(self, log: dict[str, str]) -> Callable[[SlotRebuild], None]:
        loop = asyncio.get_running_loop()

        def on_rebuilt(job: SlotRebuild) -> None:  # clock thread
            elapsed = time.perf_counter() - job.started
            loop.call_soon_threadsafe(self._metrics.rebuild_seconds.observe, elapsed)
            logger.info(
                "slot %d rebuilt from %.1f s of history (%d LM steps) in %.0f ms (%.0f ms of compute)",
                job.slot,
                job.window.seconds,
                job.lm_steps,
                1000 * elapsed,
                1000 * job.compute_s,
                extra=log,
            )

        return on_rebuilt

    async def _move_on_drain(self) -> None:
        """Once Serve stops this replica, hand its sessions to the others instead of holding them."""
        await self._drain.wait_until_stopping()
        moved = self._port.move_all("the model replica is draining")
        if moved:
            self._metrics.sessions_moved.inc(moved)
        self._record_slots()
        # Sessions with a persona prompt cannot be rebuilt elsewhere: they stay until they end (or the grace).
        kept = self._port.sessions
        logger.info(
            "replica draining: %d sessions told to move, %d with a persona stay to their end",
            moved,
            kept,
            extra=self._log,
        )

    def tick_durations(self) -> list[float]:
        """Durations (s) of the ticks that count (`TickStats.counts`) since the last call."""
        durations = list(self._recent_ticks)
        self._recent_ticks.clear()
        return durations

    def _record_slots(self) -> None:
        self._metrics.record_slots(self.runner.slots_used, self.runner.slots_total, self._port.sessions)

    async def _flush_metrics(self) -> None:
        while True:
            await asyncio.sleep(METRICS_FLUSH_S)
            ticks = [self._ticks.popleft() for _ in range(len(self._ticks))]
            self._metrics.record_ticks(ticks)
            self._recent_ticks.extend(t.duration_s for t in ticks if t.counts)
            self._metrics.record_capacity(self.runner.capacity())
            self._metrics.record_prompt_cache(self.runner.prompt_cache_stats())
            self._record_slots()

    def check_health(self) -> None:
        if not self.runner.running:
            raise RuntimeError("the engine's clock thread stopped")

    def stop(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.stop()
