"""In-process gateway: model runners in this process, no Ray. Used by tests and inside model replicas."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping

import numpy as np
import numpy.typing as npt

from serve_app.config import AppConfig, ModelConfig
from serve_app.engine.batch import BatchedEngine, NoFreeSlot
from serve_app.engine.loader import load_model
from serve_app.engine.port import EngineFrame
from serve_app.engine.runner import ClockedRunner, TickStats
from serve_app.server.gateway import ModelNotFound, NoCapacity, SessionLost, SlotStream

logger = logging.getLogger(__name__)

_END = object()


class RunnerSlotStream:
    """One ClockedRunner slot seen from asyncio: the runner thread hands frames to the loop."""

    def __init__(self, runner: ClockedRunner, loop: asyncio.AbstractEventLoop) -> None:
        self._runner = runner
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._closed = False
        # open_slot raises NoFreeSlot; nothing to undo then.
        self.slot = runner.open_slot(self._on_frame, on_error=self._on_error)

    @classmethod
    def open(cls, runner: ClockedRunner) -> RunnerSlotStream:
        return cls(runner, asyncio.get_running_loop())

    def _hand_over(self, item: object) -> None:
        # RuntimeError: the loop is gone, the session already ended.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _on_frame(self, frame: EngineFrame) -> None:
        self._hand_over(frame)

    def _on_error(self, error: BaseException) -> None:
        self._hand_over(error)

    async def send_audio(self, pcm: npt.NDArray[np.float32]) -> None:
        if self._closed:
            raise SessionLost("the session's slot is closed")
        self._runner.push(self.slot, pcm)

    async def frames(self) -> AsyncIterator[EngineFrame]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise SessionLost(f"model step failed: {item}") from item
            assert isinstance(item, EngineFrame)
            yield item

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._runner.close_slot(self.slot)
        self._queue.put_nowait(_END)


class LocalGateway:
    """Serves every model from runners in this process."""

    def __init__(self, runners: Mapping[str, ClockedRunner]) -> None:
        self._runners = dict(runners)

    def model_ids(self) -> list[str]:
        return list(self._runners)

    async def is_ready(self) -> bool:
        return all(r.ready for r in self._runners.values())

    async def open_session(self, model_id: str, session_id: str) -> SlotStream:
        runner = self._runners.get(model_id)
        if runner is None:
            raise ModelNotFound(model_id)
        try:
            stream = RunnerSlotStream.open(runner)
        except NoFreeSlot as exc:
            raise NoCapacity(model_id) from exc
        logger.info(
            "session opened", extra={"session_id": session_id, "model": model_id, "slot": stream.slot}
        )
        return stream

    def stop(self) -> None:
        for runner in self._runners.values():
            runner.stop()


def start_runner(model: ModelConfig, on_tick: Callable[[TickStats], None] | None = None) -> ClockedRunner:
    """Load, warm up and start one model's runner (blocking: seconds on CPU, minutes for 7B on GPU)."""
    engine = BatchedEngine(load_model(model.spec), slots=model.slots, sampling=model.sampling)
    engine.warmup()
    runner = ClockedRunner(engine, on_tick=on_tick)
    runner.start()
    logger.info("model ready", extra={"model": model.id, "slots": model.slots})
    return runner


def build_local_gateway(config: AppConfig) -> LocalGateway:
    return LocalGateway({m.id: start_runner(m) for m in config.models})
