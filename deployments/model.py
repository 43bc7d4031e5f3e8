"""Model deployment: one class, bound once per configured model type (deployment name = model id).

A replica hosts one BatchedEngine driven by a ClockedRunner thread and a ReplicaPort (the frame
channel's replica end), all in a `SlotHost` (deployments/slot_host.py). Each session is one long-lived
lease call to `session_stream`: Serve routes it once, counts it against `max_ongoing_requests` (= slots),
autoscales on it and lets it finish on drain. The lease carries no audio.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ray import serve
from ray.serve import Deployment

from deployments.slot_host import SlotHost
from deployments.wire import Admission, LeaseEnd
from serve_app.config import ModelConfig

if TYPE_CHECKING:
    from serve_app.engine.history import ResumeWindow
    from serve_app.transport.address import ChannelAddress


class ModelReplica:
    # Serve awaits an async constructor; mypy only knows plain ones.
    async def __init__(self, model: dict[str, Any]) -> None:  # type: ignore[misc]
        self._host = SlotHost(ModelConfig.model_validate(model), text_only=False)
        await self._host.start()

    async def session_stream(
        self, session_id: str, resume: ResumeWindow | None = None
    ) -> AsyncIterator[Admission | LeaseEnd]:
        """The session's lease (SlotHost.session_stream); `resume` continues it from another replica."""
        async for item in self._host.session_stream(session_id, resume):
            yield item

    def channel(self) -> tuple[str, ChannelAddress]:
        """For tests and operators: this replica's id and where its frame channel listens."""
        return self._host.replica_id, self._host.address

    def engine_thread(self) -> tuple[int, int | None]:
        """(process id, OS thread id of the engine clock): benchmarks split engine from transport CPU."""
        return os.getpid(), self._host.runner.native_thread_id

    def tick_durations(self) -> list[float]:
        """Durations (s) of the ticks that stepped a slot since the last call: benchmarks follow the tick
        over time (the soak); the metrics export only histograms of them."""
        return self._host.tick_durations()

    def check_health(self) -> None:
        self._host.check_health()

    def __del__(self) -> None:
        host = getattr(self, "_host", None)
        if host is not None:
            host.stop()


ModelDeployment: Deployment = serve.deployment(
    max_ongoing_requests=8,  # build_app sets it to the model's slots
    graceful_shutdown_timeout_s=300,
    # Enough for the embedded tiny checkpoints (`serve run deployments.app:app` on a 2-core machine); the
    # Serve YAML sets real values (num_gpus: 1 in production).
    ray_actor_options={"num_cpus": 0.5, "num_gpus": 0},
)(ModelReplica)
