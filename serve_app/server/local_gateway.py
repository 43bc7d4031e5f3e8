"""In-process gateway: model runners in this process, no Ray. Used by tests and local experiments."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

import numpy as np
import numpy.typing as npt

from serve_app.config import NO_PROMPT, AppConfig, ModelTraits, model_traits
from serve_app.engine.asyncio_slot import AsyncSlot
from serve_app.engine.capacity import AdmissionGate
from serve_app.engine.errors import FellBehind, NoFreeSlot, SlotEnded
from serve_app.engine.port import EngineFrame, Persona
from serve_app.engine.runner import ClockedRunner
from serve_app.engine.startup import start_runner
from serve_app.engine.voice_names import default_voice
from serve_app.server.gateway import GatewayError, ModelNotFound, NoCapacity, SessionFellBehind, SessionLost

logger = logging.getLogger(__name__)


def _gateway_error(error: SlotEnded) -> GatewayError:
    if isinstance(error, FellBehind):
        return SessionFellBehind(str(error))
    return SessionLost(str(error))


class LocalSlotStream:
    """An AsyncSlot with the engine's errors mapped onto the gateway's (and a persona's unset fields onto
    the model's defaults)."""

    def __init__(self, slot: AsyncSlot, text_delay_s: float = 0.0, traits: ModelTraits = NO_PROMPT) -> None:
        self._slot = slot
        self.slot = slot.slot
        self.text_delay_s = text_delay_s
        self._traits = traits

    async def send_audio(self, pcm: npt.NDArray[np.float32]) -> None:
        try:
            await self._slot.send_audio(pcm)
        except SlotEnded as exc:
            raise _gateway_error(exc) from exc

    async def set_persona(self, persona: Persona) -> None:
        try:
            await self._slot.set_persona(self._traits.persona(persona))
        except SlotEnded as exc:
            raise _gateway_error(exc) from exc

    async def say(self, text: str) -> None:
        try:
            await self._slot.say(text)
        except SlotEnded as exc:
            raise _gateway_error(exc) from exc

    async def stop_saying(self) -> None:
        await self._slot.stop_saying()

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

    def __init__(
        self, runners: Mapping[str, ClockedRunner], traits: Mapping[str, ModelTraits] | None = None
    ) -> None:
        """`traits`: per model, as configured; a model without them is described by its runner (its loaded
        voices)."""
        self._runners = dict(runners)
        self._gates = {mid: AdmissionGate(runner.capacity) for mid, runner in self._runners.items()}
        self._traits = {mid: _runner_traits(runner) for mid, runner in self._runners.items()}
        self._traits.update({mid: t for mid, t in (traits or {}).items() if mid in self._runners})

    def model_ids(self) -> list[str]:
        return list(self._runners)

    def traits(self, model_id: str) -> ModelTraits:
        traits = self._traits.get(model_id)
        if traits is None:
            raise ModelNotFound(model_id)
        return traits

    async def is_ready(self) -> bool:
        return all(r.ready for r in self._runners.values())

    def status(self) -> dict[str, object]:
        from dataclasses import asdict

        # Read from the runner now: the figures are current (the Ray gateway's are as last reported).
        return {
            mid: {"local": {**asdict(runner.capacity()), "reported_at": "now", "age_s": 0.0}}
            for mid, runner in self._runners.items()
        }

    async def open_session(self, model_id: str, session_id: str) -> LocalSlotStream:
        runner = self._runners.get(model_id)
        if runner is None:
            raise ModelNotFound(model_id)
        try:
            slot = await self._gates[model_id].admit(lambda: AsyncSlot.open(runner, check_budget=True))
            stream = LocalSlotStream(slot, runner.text_delay_s, self._traits[model_id])
        except NoFreeSlot as exc:
            raise NoCapacity(f"{model_id}: {exc}") from exc
        logger.info(
            "session opened", extra={"session_id": session_id, "model": model_id, "slot": stream.slot}
        )
        return stream

    def stop(self) -> None:
        for runner in self._runners.values():
            runner.stop()


def _runner_traits(runner: ClockedRunner) -> ModelTraits:
    voices = runner.voices
    if not voices:
        return NO_PROMPT
    return ModelTraits(
        follows_instructions=True,
        voices=voices,
        default_voice=default_voice(voices),
        default_instructions=None,
        random_weights=False,
    )


def build_local_gateway(config: AppConfig) -> LocalGateway:
    return LocalGateway(
        {m.id: start_runner(**m.runner_options()) for m in config.models},
        {m.id: model_traits(m) for m in config.models},
    )
