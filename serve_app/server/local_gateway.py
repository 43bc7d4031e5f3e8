"""In-process gateway: model runners in this process, no Ray. Used by tests and local experiments."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

import numpy as np
import numpy.typing as npt

from serve_app.config import AppConfig
from serve_app.engine.asyncio_slot import AsyncSlot
from serve_app.engine.capacity import AdmissionGate
from serve_app.engine.errors import FellBehind, NoFreeSlot, SlotEnded
from serve_app.engine.port import EngineFrame
from serve_app.engine.runner import ClockedRunner
from serve_app.engine.startup import start_runner
from serve_app.server.gateway import GatewayError, ModelNotFound, NoCapacity, SessionFellBehind, SessionLost

logger = logging.getLogger(__name__)


def _gateway_error(error: SlotEnded) -> GatewayError:
    if isinstance(error, FellBehind):
        return SessionFellBehind(str(error))
    return SessionLost(str(error))


class LocalSlotStream:
    """An AsyncSlot with the engine's errors mapped onto the gateway's."""

    def __init__(self, slot: AsyncSlot, text_delay_s: float = 0.0) -> None:
        self._slot = slot
        self.slot = slot.slot
        self.text_delay_s = text_delay_s

    async def send_audio(self, pcm: npt.NDArray[np.float32]) -> None:
        try:
            await self._slot.send_audio(pcm)
        except SlotEnded as exc:
            raise _gateway_error(exc) from exc

    async def frames(self) -> AsyncIterator[EngineFrame]:
        try:
            async for frame in self._slot.frames():
                yield frame
        except SlotEnded as exc:
            raise _gateway_error(exc) from exc

    async def close(self) -> None:
        await self._slot.close()


class LocalGateway:
    """Serves every model from runners in this process."""

    def __init__(self, runners: Mapping[str, ClockedRunner]) -> None:
        self._runners = dict(runners)
        self._gates = {mid: AdmissionGate(runner.capacity) for mid, runner in self._runners.items()}

    def model_ids(self) -> list[str]:
        return list(self._runners)

    async def is_ready(self) -> bool:
        return all(r.ready for r in self._runners.values())

    def status(self) -> dict[str, object]:
        from dataclasses import asdict

        return {mid: {"local": asdict(runner.capacity())} for mid, runner in self._runners.items()}

    async def open_session(self, model_id: str, session_id: str) -> LocalSlotStream:
        runner = self._runners.get(model_id)
        if runner is None:
            raise ModelNotFound(model_id)
        try:
            slot = await self._gates[model_id].admit(lambda: AsyncSlot.open(runner, check_budget=True))
            stream = LocalSlotStream(slot, runner.text_delay_s)
        except NoFreeSlot as exc:
            raise NoCapacity(model_id) from exc
        logger.info(
            "session opened", extra={"session_id": session_id, "model": model_id, "slot": stream.slot}
        )
        return stream

    def stop(self) -> None:
        for runner in self._runners.values():
            runner.stop()


def build_local_gateway(config: AppConfig) -> LocalGateway:
    return LocalGateway({m.id: start_runner(**m.runner_options()) for m in config.models})
