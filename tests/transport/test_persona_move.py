"""What a move does with a persona session and with scripted speech (serve_app/transport/session_move.py),
over in-process tiny PersonaPlex replicas: a session with a persona prompt is not moved (its voice prompt
is not in its history), so a drain keeps it and a replica's loss ends it, saying why; a script running at a
move is finished on the new replica, its frames still joining to exactly its text."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import torch

from serve_app.config import ModelTraits
from serve_app.engine.loader import LoadedModel, load_model
from serve_app.engine.persona_prompts import PersonaPrompts
from serve_app.engine.port import EngineFrame, Persona
from serve_app.engine.spec import ModelSpec
from serve_app.server.gateway import SessionLost
from serve_app.transport.session_move import PERSONA_LOST, MovingSlotStream
from tests.transport.replicas import MODEL, Moves, PortPlacer, Replica, Talker

PERIOD_S = 0.03
"""Faster than real time (input is sent ahead): a ~70-step script takes a couple of seconds."""
SCRIPT = "hello there, this is a scripted greeting"
TRAITS = ModelTraits(
    follows_instructions=True,
    voices=("NATF0", "NATM1", "VARF2"),
    default_voice="NATF0",
    default_instructions=None,
    random_weights=True,
)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Two engines share the cores: one torch thread each, as a CPU replica runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tiny_persona: LoadedModel, tiny_persona_dir: Path) -> list[LoadedModel]:
    """One loaded model per replica: a model streams in one engine at a time."""
    return [tiny_persona, load_model(ModelSpec(local_dir=tiny_persona_dir, device="cpu"))]


@pytest_asyncio.fixture(loop_scope="function")
async def replicas(models: list[LoadedModel]) -> AsyncIterator[list[Replica]]:
    started = [
        await Replica.start(
            model, f"replica-{name}", period_s=PERIOD_S, prompts=PersonaPrompts(model, "tiny-persona")
        )
        for name, model in zip("ab", models, strict=True)
    ]
    try:
        yield started
    finally:
        for replica in started:
            await replica.stop()


async def talker(replicas: list[Replica], moves: Moves) -> Talker:
    placer = PortPlacer(list(replicas))
    placement = await placer.place(MODEL, "session-1")
    return Talker(MovingSlotStream(placer, "session-1", MODEL, placement, moves=moves, traits=TRAITS), seed=3)


def scripted_text(frames: list[EngineFrame]) -> str:
    return "".join(frame.text or "" for frame in frames if frame.scripted)


async def test_a_persona_session_stays_through_a_drain_and_is_lost_with_its_replica(
    replicas: list[Replica],
) -> None:
    moves = Moves()
    speaker = await talker(replicas, moves)
    await speaker.stream.set_persona(Persona(voice="NATM1", instructions=None))
    await speaker.send(4)
    await speaker.stepped_all()
    first, _ = replicas
    assert first.drain() == 0  # not told to move: it could not be rebuilt elsewhere
    await speaker.send(3)
    await speaker.stepped_all()  # still served where its persona is
    assert speaker.stream.placement.replica_id == first.id
    await first.kill()
    error = await speaker.ended()
    assert isinstance(error, SessionLost) and PERSONA_LOST in str(error)
    assert moves.moved == [] and moves.failed == []


async def test_a_script_running_at_a_move_is_finished_on_the_new_replica(replicas: list[Replica]) -> None:
    moves = Moves()
    speaker = await talker(replicas, moves)  # no persona: the session can move
    await speaker.send(2)
    await speaker.stepped_all()
    await speaker.stream.say(SCRIPT)
    await speaker.send(12)
    await speaker.stepped_all()
    said = scripted_text(speaker.frames)
    assert said and said != SCRIPT and SCRIPT.startswith(said)  # midway
    first, second = replicas
    assert first.drain() == 1
    await speaker.send(150)
    await speaker.until(lambda: any(frame.script_done for frame in speaker.frames), timeout=15.0)
    assert speaker.stream.placement.replica_id == second.id and len(moves.moved) == 1
    assert scripted_text(speaker.frames) == SCRIPT
    assert sum(frame.script_done for frame in speaker.frames) == 1
