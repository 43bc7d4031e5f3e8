"""A session's persona and scripted speech over the frame channel, on a tiny PersonaPlex replica: the persona
is prefilled before the first audio steps, a script comes back as `scripted` frames whose texts join to
exactly its text, and a stopped script sends no more of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.batch import BatchedEngine
from serve_app.engine.capacity import TickBudget
from serve_app.engine.loader import LoadedModel
from serve_app.engine.persona_prompts import PersonaPrompts
from serve_app.engine.port import EngineFrame, Persona
from serve_app.engine.runner import ClockedRunner
from serve_app.engine.spec import SamplingParams
from serve_app.transport.ingress_channel import ChannelEnded, ChannelSession, ReplicaChannel
from serve_app.transport.reasons import EndReason
from serve_app.transport.replica_port import ReplicaPort
from tests.engine.support import noise

PERIOD_S = 0.03
"""Faster than real time: a script of ~60 steps takes under 2 s (audio is sent ahead of its schedule)."""
NODE = "node-a"
REPLICA = "persona-replica"
ROLE = "you are a calm guide who answers in few words"
SCRIPT = "hello there, this is a scripted greeting"
MODEL_KEY = "tiny-persona"


@dataclass(eq=False)
class Replica:
    engine: BatchedEngine
    runner: ClockedRunner
    port: ReplicaPort
    channel: ReplicaChannel


@pytest_asyncio.fixture(loop_scope="function")
async def replica(tiny_persona: LoadedModel) -> AsyncIterator[Replica]:
    engine = BatchedEngine(tiny_persona, slots=2, sampling=SamplingParams(use_sampling=False))
    runner = ClockedRunner(
        engine,
        period_s=PERIOD_S,
        max_lag_s=None,  # the cores are shared with other tests: never shed for lag here
        budget=TickBudget(2, admit_fraction=None, period_s=PERIOD_S),
        prompts=PersonaPrompts(tiny_persona, MODEL_KEY),
    )
    runner.start()
    port = ReplicaPort(runner, REPLICA, node_id=NODE)
    address = await port.start()
    channel = await ReplicaChannel.connect(address, REPLICA, NODE)
    try:
        yield Replica(engine, runner, port, channel)
    finally:
        await channel.close()
        await port.close()
        runner.stop()
        engine.close()


@dataclass(eq=False)
class Reader:
    """Drains one session's frames from a task of its own."""

    session: ChannelSession
    frames: list[EngineFrame] = field(default_factory=list)
    error: BaseException | None = None
    task: asyncio.Task[None] | None = None

    def start(self) -> Reader:
        self.task = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for frame in self.session.frames():
                self.frames.append(frame)
        except ChannelEnded as exc:
            self.error = exc

    @property
    def steps(self) -> int:
        return sum(len(frame.history) for frame in self.frames)

    async def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                assert self.error is None, f"the session ended: {self.error}"
                await asyncio.sleep(0.01)


def send(session: ChannelSession, frames: int, seed: int) -> None:
    audio = noise(frames, seed=seed)
    for index in range(frames):
        session.send_audio(audio[index * FRAME_SAMPLES : (index + 1) * FRAME_SAMPLES])


def scripted_text(frames: list[EngineFrame]) -> str:
    return "".join(frame.text or "" for frame in frames if frame.scripted)


async def open_session(replica: Replica, persona: Persona | None) -> tuple[int, Reader]:
    lease = replica.port.lease("session", check_budget=False)
    session = replica.channel.attach(lease.id)
    if persona is not None:
        session.set_persona(persona)  # before the first audio, as a session sends it
    return lease.id, Reader(session).start()


async def test_a_persona_is_prefilled_before_the_first_audio_steps(replica: Replica) -> None:
    lease_id, reader = await open_session(replica, Persona(voice="NATM1", instructions=ROLE))
    send(reader.session, 6, seed=1)
    await reader.until(lambda: reader.steps >= 6)
    cache = replica.engine.prompt_cache
    assert (MODEL_KEY, "NATM1", ROLE) in cache and cache.misses == 1
    assert replica.port._leases[lease_id].prompted  # a persona session does not move on drain
    assert replica.port.move_all("draining") == 0
    assert reader.steps == 6  # the audio held while the prompt was built all stepped, once
    assert all(frame.pcm.size == FRAME_SAMPLES for frame in reader.frames)
    assert not any(frame.scripted for frame in reader.frames)


async def test_an_unknown_voice_ends_the_session_naming_the_voices(replica: Replica) -> None:
    _, reader = await open_session(replica, Persona(voice="NOPE", instructions=None))
    send(reader.session, 3, seed=2)
    assert reader.task is not None
    await asyncio.wait_for(reader.task, 10.0)
    assert isinstance(reader.error, ChannelEnded) and reader.error.reason is EndReason.LOST
    assert "NOPE" in reader.error.detail and "NATF0, NATM1, VARF2" in reader.error.detail
    assert not reader.frames


async def test_said_text_comes_back_as_scripted_frames_that_join_to_exactly_the_text(
    replica: Replica,
) -> None:
    _, reader = await open_session(replica, Persona(voice="VARF2", instructions=None))
    send(reader.session, 4, seed=3)
    await reader.until(lambda: reader.steps >= 4)
    reader.session.say(SCRIPT)
    send(reader.session, 150, seed=4)
    await reader.until(lambda: any(frame.script_done for frame in reader.frames), timeout=15.0)
    done = [index for index, frame in enumerate(reader.frames) if frame.script_done]
    assert len(done) == 1
    scripted = [frame for frame in reader.frames if frame.scripted]
    assert scripted_text(scripted) == SCRIPT
    assert scripted[-1] is reader.frames[done[0]]  # the script's last frame says it is done
    assert all(frame.pcm.size == FRAME_SAMPLES for frame in scripted)  # its audio follows the text
    assert all(frame.speaking == (frame.text is not None) for frame in scripted)
    assert not any(frame.scripted for frame in reader.frames[:4])  # nothing forced before `say`


async def test_stop_saying_midway_sends_no_more_of_the_script(replica: Replica) -> None:
    _, reader = await open_session(replica, Persona(voice=None, instructions=ROLE))
    send(reader.session, 2, seed=5)
    await reader.until(lambda: reader.steps >= 2)
    reader.session.say(SCRIPT)
    send(reader.session, 10, seed=6)
    await reader.until(lambda: reader.steps >= 12)
    said = scripted_text(reader.frames)
    assert said and SCRIPT.startswith(said) and said != SCRIPT  # midway: some of it, not all
    assert not any(frame.script_done for frame in reader.frames)
    reader.session.stop_saying()
    stopped_at = len(reader.frames)
    send(reader.session, 30, seed=7)
    await reader.until(lambda: reader.steps >= 42)
    after = reader.frames[stopped_at:]
    assert len(after) == 30
    assert not any(frame.scripted or frame.script_done for frame in after)
    assert scripted_text(reader.frames) == said


async def test_persona_and_scripts_of_a_lease_the_connection_does_not_hold_are_refused(
    replica: Replica,
) -> None:
    lease = replica.port.lease("held-elsewhere", check_budget=False)
    session = ChannelSession(replica.channel, lease.id)  # never attached on this connection
    replica.channel._sessions[lease.id] = session
    reader = Reader(session).start()
    session.say(SCRIPT)
    assert reader.task is not None
    await asyncio.wait_for(reader.task, 5.0)
    assert isinstance(reader.error, ChannelEnded) and reader.error.reason is EndReason.UNKNOWN


@pytest.mark.parametrize("voice", [None, "NATF0"])
async def test_a_model_without_a_prompt_channel_ignores_a_persona(
    tiny_persona: LoadedModel, voice: str | None
) -> None:
    """The same checkpoint served without prompts (as stock Moshi is): the persona is a no-op, the
    session steps its audio at once and still moves on drain."""
    with BatchedEngine(tiny_persona, slots=1, sampling=SamplingParams(use_sampling=False)) as engine:
        runner = ClockedRunner(engine, period_s=PERIOD_S, max_lag_s=None)
        runner.start()
        try:
            slot = runner.open_slot(lambda frame: None)
            assert runner.voices == ()
            assert runner.set_persona(slot, Persona(voice=voice, instructions=ROLE)) is False
            runner.close_slot(slot)
        finally:
            runner.stop()
        assert len(engine.prompt_cache) == 0
