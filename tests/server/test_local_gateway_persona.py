"""The in-process gateway's persona and scripted speech (`SlotStream.set_persona`, `say`, `stop_saying`) on a
tiny PersonaPlex runner: unset persona fields take the model's configured defaults, and said text comes
back as scripted frames that join to exactly the text."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from serve_app.config import NO_PROMPT, ModelTraits
from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.batch import BatchedEngine
from serve_app.engine.capacity import TickBudget
from serve_app.engine.loader import LoadedModel
from serve_app.engine.persona_prompts import PersonaPrompts
from serve_app.engine.port import EngineFrame, Persona
from serve_app.engine.runner import ClockedRunner
from serve_app.engine.spec import SamplingParams
from serve_app.server.gateway import ModelNotFound
from serve_app.server.local_gateway import LocalGateway, LocalSlotStream
from tests.engine.conftest import _tiny_cache, tiny_persona, tiny_persona_dir
from tests.engine.support import noise

__all__ = ["_tiny_cache", "tiny_persona", "tiny_persona_dir"]  # the engine tests' fixtures, shared

PERIOD_S = 0.03
MODEL = "personaplex"
KEY = "tiny-persona"
ROLE = "you are a calm guide"
SCRIPT = "hello there, this is a scripted greeting"
CONFIGURED = ModelTraits(
    follows_instructions=True,
    voices=("NATF0", "NATM1", "VARF2"),
    default_voice="VARF2",
    default_instructions=ROLE,
    random_weights=True,
)


@pytest.fixture
def runner(tiny_persona: LoadedModel) -> Iterator[ClockedRunner]:
    with BatchedEngine(tiny_persona, slots=2, sampling=SamplingParams(use_sampling=False)) as engine:
        runner = ClockedRunner(
            engine,
            period_s=PERIOD_S,
            max_lag_s=None,
            budget=TickBudget(2, admit_fraction=None, period_s=PERIOD_S),
            prompts=PersonaPrompts(tiny_persona, KEY),
        )
        runner.start()
        yield runner
        runner.stop()


async def collect(stream: LocalSlotStream, until: str, timeout: float = 15.0) -> list[EngineFrame]:
    frames: list[EngineFrame] = []
    async with asyncio.timeout(timeout):
        async for frame in stream.frames():
            frames.append(frame)
            if until == "script_done" and frame.script_done:
                return frames
            if until == "first" and frames:
                return frames
    raise AssertionError("the slot's frames ended")


async def send(stream: LocalSlotStream, frames: int, seed: int) -> None:
    audio = noise(frames, seed=seed)
    for index in range(frames):
        await stream.send_audio(audio[index * FRAME_SAMPLES : (index + 1) * FRAME_SAMPLES])


def test_traits_come_from_the_configuration_else_from_the_runners_voices(runner: ClockedRunner) -> None:
    assert LocalGateway({MODEL: runner}, {MODEL: CONFIGURED}).traits(MODEL) == CONFIGURED
    derived = LocalGateway({MODEL: runner}).traits(MODEL)
    assert derived.voices == ("NATF0", "NATM1", "VARF2") and derived.default_voice == "NATF0"
    assert derived.follows_instructions and derived.prompt_channel
    with pytest.raises(ModelNotFound):
        LocalGateway({MODEL: runner}).traits("nope")
    assert not NO_PROMPT.prompt_channel


async def test_an_unset_persona_takes_the_configured_defaults_and_a_script_is_said(
    runner: ClockedRunner,
) -> None:
    gateway = LocalGateway({MODEL: runner}, {MODEL: CONFIGURED})
    stream = await gateway.open_session(MODEL, "session-1")
    try:
        await stream.set_persona(Persona(voice=None, instructions=None))
        await stream.stop_saying()  # nothing running: a no-op
        await send(stream, 3, seed=1)
        first = await collect(stream, "first")
        assert first and not first[0].scripted
        engine: BatchedEngine = runner._engine
        assert (KEY, "VARF2", ROLE) in engine.prompt_cache  # the configured defaults were prompted
        await stream.say(SCRIPT)
        await send(stream, 150, seed=2)
        frames = await collect(stream, "script_done")
        assert "".join(f.text or "" for f in frames if f.scripted) == SCRIPT
        assert sum(f.script_done for f in frames) == 1
    finally:
        await stream.close()


def test_models_list_each_models_voices_and_whether_it_follows_instructions() -> None:
    from starlette.testclient import TestClient

    from serve_app.config import EMBEDDED_MODELS, EMBEDDED_PERSONA_MODEL, AppConfig
    from serve_app.server.app import build_realtime_app

    class Listing:
        """Only `/v1/models`: the embedded default's ids, nothing loaded."""

        def model_ids(self) -> list[str]:
            return list(EMBEDDED_MODELS)

        def traits(self, model_id: str) -> ModelTraits:
            raise AssertionError("the listing comes from the configuration")

        async def is_ready(self) -> bool:
            return True

        def status(self) -> dict[str, object]:
            return {}

        async def open_session(self, model_id: str, session_id: str) -> LocalSlotStream:
            raise AssertionError("no session here")

    with TestClient(build_realtime_app(Listing(), AppConfig.embedded_default())) as client:
        data = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    persona = data.pop(EMBEDDED_PERSONA_MODEL)
    assert persona["voices"] == ["NATF0", "NATM1", "VARF2"] and persona["default_voice"] == "NATF0"
    assert persona["follows_instructions"] is True and persona["random_weights"] is True
    assert data and all(m["voices"] == [] and m["follows_instructions"] is False for m in data.values())
