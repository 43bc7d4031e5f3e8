"""In-process model replicas (tiny engine, clock, ReplicaPort) and a `Placer` over them: the session-move
logic's test bed, without Ray. A `PortPlacer` tries the replicas in order, as a router might, and each
replica judges the session itself (`ReplicaPort.lease` with its budget), as a Serve replica does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.batch import BatchedEngine
from serve_app.engine.capacity import TickBudget
from serve_app.engine.errors import NoFreeSlot
from serve_app.engine.history import HistorySpec, ResumeWindow
from serve_app.engine.loader import LoadedModel
from serve_app.engine.persona_prompts import PersonaPrompts
from serve_app.engine.port import EngineFrame
from serve_app.engine.runner import ClockedRunner
from serve_app.engine.spec import SamplingParams
from serve_app.server.gateway import GatewayError, NoCapacity
from serve_app.transport.ingress_channel import ChannelSession
from serve_app.transport.pool import ChannelPool
from serve_app.transport.replica_port import Lease, ReplicaPort
from serve_app.transport.session_move import MovingSlotStream
from tests.engine.support import noise

PERIOD_S = 0.08
NODE = "node-a"
MODEL = "moshi-test"
RELEASE_TIMEOUT_S = 5.0


@dataclass(eq=False)
class Replica:
    """One model replica: its engine on its own loaded model (a model streams in one context at a time)."""

    engine: BatchedEngine
    runner: ClockedRunner
    port: ReplicaPort
    alive: bool = True
    draining: bool = False

    @property
    def id(self) -> str:
        return self.port.replica_id

    @classmethod
    async def start(
        cls,
        model: LoadedModel,
        replica_id: str,
        *,
        slots: int = 2,
        admit_fraction: float | None = None,
        period_s: float = PERIOD_S,
        prompts: PersonaPrompts | None = None,
    ) -> Replica:
        """`admit_fraction` None (the default): admits on free slots alone, as the Ray move tests' model
        does, so the tests do not depend on how busy the cores are. For the same reason no session is
        ended for lag (tests/engine/test_runner.py covers the lag limit), and the engine is not warmed up
        (that only captures CUDA graphs; on a CPU it would cost each test a few ticks per replica).
        `prompts`: the model's persona prompts (a PersonaPlex replica)."""
        engine = BatchedEngine(model, slots=slots, sampling=SamplingParams(use_sampling=False))
        budget = TickBudget(slots, admit_fraction=admit_fraction, period_s=period_s)
        runner = ClockedRunner(engine, period_s=period_s, budget=budget, max_lag_s=None, prompts=prompts)
        runner.start()
        port = ReplicaPort(runner, replica_id, node_id=NODE)
        await port.start()
        return cls(engine, runner, port)

    async def kill(self) -> None:
        """The replica dies: its connections drop, its sessions' state is gone."""
        self.alive = False
        await self.port.close()

    def drain(self) -> int:
        """Serve stops the replica: it tells its sessions to move, and takes no more."""
        self.draining = True
        return self.port.move_all("the model replica is draining")

    async def stop(self) -> None:
        if self.alive:
            await self.port.close()
        self.runner.stop()
        self.engine.close()


@dataclass(eq=False)
class PortPlacement:
    """A `Placement` on an in-process replica: its port's lease and the session's channel share."""

    replica: Replica
    lease: Lease
    channel: ChannelSession
    text_delay_s: float
    history: HistorySpec | None

    @property
    def replica_id(self) -> str:
        return self.replica.id

    def abandon(self) -> None:
        self.channel.close()

    async def release(self) -> None:
        self.channel.close()
        if self.replica.alive:
            await asyncio.wait_for(asyncio.shield(self.lease.ended), RELEASE_TIMEOUT_S)


@dataclass(eq=False)
class PortPlacer:
    """A `Placer` over in-process replicas, tried in order; records what each refused and why."""

    replicas: list[Replica]
    pool: ChannelPool = field(default_factory=lambda: ChannelPool(NODE))
    refusals: list[tuple[str, str]] = field(default_factory=list)
    """(replica id, why) of every refusal, in order."""
    placed: list[PortPlacement] = field(default_factory=list)
    hold: asyncio.Event | None = None
    """When set, a resumed session's placement waits for it once admitted (a slow move, as over Ray)."""
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while a placement waits on `hold`."""

    async def place(
        self,
        model_id: str,
        session_id: str,
        *,
        resume: ResumeWindow | None = None,
        timeout_s: float | None = None,
    ) -> PortPlacement:
        if model_id != MODEL:
            raise GatewayError(f"no model {model_id}")
        for replica in self.replicas:
            if not replica.alive or replica.draining:
                continue
            try:
                lease = replica.port.lease(session_id, check_budget=True, resume=resume)
            except NoFreeSlot as exc:
                self.refusals.append((replica.id, str(exc)))
                continue
            assert replica.port.address is not None
            channel = await self.pool.get(replica.id, replica.port.address)
            runner = replica.runner
            placement = PortPlacement(
                replica, lease, channel.attach(lease.id), runner.text_delay_s, runner.history_spec
            )
            self.placed.append(placement)
            if resume is not None and self.hold is not None:
                self.holding.set()
                await self.hold.wait()
            return placement
        raise NoCapacity(model_id)


@dataclass(eq=False)
class Moves:
    """A `MoveObserver` that remembers."""

    moved: list[tuple[str, str, float]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def session_moved(self, model_id: str, reason: str, gap_s: float) -> None:
        self.moved.append((model_id, reason, gap_s))

    def session_move_failed(self, model_id: str, reason: str) -> None:
        self.failed.append((model_id, reason))


class Talker:
    """Drives one MovingSlotStream: real-time input from its own task, output drained by another."""

    def __init__(self, stream: MovingSlotStream, seed: int) -> None:
        self.stream = stream
        self._audio = noise(400, seed=seed)
        self.sent = 0
        """Input frames sent."""
        self.frames: list[EngineFrame] = []
        self.error: BaseException | None = None
        self._speaking: asyncio.Task[None] | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @property
    def steps(self) -> int:
        """Input frames the replicas stepped for this session, as the frames' records say."""
        return sum(len(frame.history) for frame in self.frames)

    def frame(self) -> npt.NDArray[np.float32]:
        pcm = self._audio[self.sent * FRAME_SAMPLES : (self.sent + 1) * FRAME_SAMPLES]
        self.sent += 1
        return pcm

    async def send(self, frames: int) -> None:
        """`frames` frames at once (ahead of real time: the engine steps them one per tick)."""
        for _ in range(frames):
            await self.stream.send_audio(self.frame())

    def speak(self) -> None:
        """Send a frame every period until `hush`."""

        async def paced() -> None:
            while True:
                await self.stream.send_audio(self.frame())
                await asyncio.sleep(PERIOD_S)

        self._speaking = asyncio.get_running_loop().create_task(paced())

    async def hush(self) -> None:
        if self._speaking is not None:
            self._speaking.cancel()
            with contextlib.suppress(asyncio.CancelledError, GatewayError):
                await self._speaking
            self._speaking = None

    async def _read(self) -> None:
        try:
            async for frame in self.stream.frames():
                self.frames.append(frame)
        except GatewayError as exc:
            self.error = exc

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                assert not self._reader.done() or predicate(), f"the stream ended: {self.error!r}"
                await asyncio.sleep(0.01)

    async def stepped_all(self, timeout: float = 5.0) -> None:
        """Every frame sent so far was stepped, exactly once (never twice: checked by the caller's ==)."""
        await self.until(lambda: self.steps >= self.sent, timeout)

    async def ended(self, timeout: float = 5.0) -> BaseException | None:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.error
