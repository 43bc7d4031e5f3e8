"""The session-move logic (serve_app/transport/session_move.py) over in-process replicas, without Ray.

Each replica is a real tiny engine, clocked, behind a ReplicaPort; the stream reaches it over a real Unix
socket (ChannelPool). `PortPlacer` stands in for Serve's routing: it tries the replicas in order, and each
judges the session as a Serve replica does (`ReplicaPort.lease` with its tick budget).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import torch

from serve_app.engine.capacity import MAX_CATCH_UP_S, CapacityReport, TickBudget, catch_up_s
from serve_app.engine.loader import LoadedModel, load_model
from serve_app.engine.port import EngineFrame
from serve_app.engine.runner import CATCH_UP_FRACTION
from serve_app.engine.spec import ModelSpec
from serve_app.server.gateway import NoCapacity, SessionLost
from serve_app.transport.reasons import EndReason
from serve_app.transport.session_move import MovingSlotStream
from tests.transport.replicas import MODEL, PERIOD_S, Moves, PortPlacer, Replica, Talker

FRAMES_BEFORE = 4
"""Frames a session steps on its first replica before it moves (history to rebuild from)."""


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Each replica's engine on one torch thread, as a CPU replica runs (three engines share the cores
    here): with torch's default of one per core, a tiny tick took ten times longer on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def models(tiny_model: LoadedModel, tiny_dir: Path) -> list[LoadedModel]:
    """One loaded model per replica: a model streams in one engine at a time."""
    spare = [load_model(ModelSpec(local_dir=tiny_dir, device="cpu")) for _ in range(2)]
    return [tiny_model, *spare]


class Bed:
    """The test's replicas, placers and streams; all stopped after the test."""

    def __init__(self, models: list[LoadedModel]) -> None:
        self._models = models
        self.replicas: list[Replica] = []
        self.placers: list[PortPlacer] = []
        self.talkers: list[Talker] = []
        self.moves = Moves()

    async def replica(self, *, slots: int = 2, admit_fraction: float | None = None) -> Replica:
        index = len(self.replicas)
        replica = await Replica.start(
            self._models[index], f"replica-{'abc'[index]}", slots=slots, admit_fraction=admit_fraction
        )
        self.replicas.append(replica)
        return replica

    def placer(self, *replicas: Replica) -> PortPlacer:
        placer = PortPlacer(list(replicas))
        self.placers.append(placer)
        return placer

    async def talker(self, placer: PortPlacer, session_id: str, seed: int) -> Talker:
        placement = await placer.place(MODEL, session_id)
        stream = MovingSlotStream(placer, session_id, MODEL, placement, moves=self.moves)
        talker = Talker(stream, seed)
        self.talkers.append(talker)
        return talker

    async def close(self) -> None:
        for talker in self.talkers:
            await talker.hush()
            await talker.stream.close()
        for placer in self.placers:
            await placer.pool.close()
        for replica in self.replicas:
            await replica.stop()


@pytest_asyncio.fixture(loop_scope="function")
async def bed(models: list[LoadedModel]) -> AsyncIterator[Bed]:
    bed = Bed(models)
    try:
        yield bed
    finally:
        await bed.close()


async def started(talker: Talker) -> None:
    """The session stepped FRAMES_BEFORE frames on its first replica."""
    await talker.send(FRAMES_BEFORE)
    await talker.stepped_all()


# --- moves -----------------------------------------------------------------------------------------------


async def test_a_drained_replicas_session_moves_and_every_frame_is_stepped_once(bed: Bed) -> None:
    a, b = await bed.replica(), await bed.replica()
    placer = bed.placer(a, b)
    talker = await bed.talker(placer, "s-drain", seed=1)
    assert talker.stream.placement.replica_id == a.id
    await started(talker)

    assert a.drain() == 1
    await talker.send(3)  # sent while it moves: stepped on b
    await talker.until(lambda: bool(bed.moves.moved))
    await talker.stepped_all()
    assert talker.stream.placement.replica_id == b.id
    assert talker.error is None
    assert talker.steps == talker.sent == FRAMES_BEFORE + 3  # each once: none lost, none replayed twice
    assert (a.runner.slots_used, b.runner.slots_used) == (0, 1)
    served = talker.stream.ledger.snapshot()["s-drain"]
    assert set(served) == {a.id, b.id}
    ((model, why, gap),) = bed.moves.moved
    assert (model, why) == (MODEL, "drain") and 0 < gap < 2.0
    (move,) = talker.stream.ledger.moves()["s-drain"]
    assert (move["reason"], move["from"], move["to"]) == ("drain", a.id, b.id)
    assert not bed.moves.failed and not placer.refusals


async def test_a_dead_replicas_session_resumes_with_the_input_it_never_stepped(bed: Bed) -> None:
    a, b = await bed.replica(), await bed.replica()
    talker = await bed.talker(bed.placer(a, b), "s-dead", seed=2)
    await started(talker)

    await talker.send(3)  # queued on a, not stepped before it dies: the history replays it on b
    await a.kill()
    await talker.until(lambda: bool(bed.moves.moved))
    await talker.stepped_all()
    assert talker.stream.placement.replica_id == b.id
    assert talker.steps == talker.sent == FRAMES_BEFORE + 3
    assert [why for _, why, _ in bed.moves.moved] == ["lost"]
    # And it goes on there in real time.
    talker.speak()
    await talker.until(lambda: talker.sent >= FRAMES_BEFORE + 8)
    await talker.hush()
    await talker.stepped_all()
    assert talker.steps == talker.sent and talker.error is None


async def test_with_no_room_anywhere_the_session_is_lost_at_once(bed: Bed) -> None:
    a, b = await bed.replica(), await bed.replica(slots=1)
    placer = bed.placer(a, b)
    talker = await bed.talker(placer, "s-lost", seed=3)
    await bed.talker(bed.placer(b), "s-holds-b", seed=4)  # b's one slot
    await started(talker)

    killed = time.monotonic()
    await a.kill()
    error = await talker.ended()
    took = time.monotonic() - killed
    assert isinstance(error, SessionLost) and "could not continue" in str(error)
    assert isinstance(error.__cause__, NoCapacity)
    assert took < 1.0, f"lost after {took:.2f} s"
    assert bed.moves.failed == [(MODEL, "server_at_capacity")] and not bed.moves.moved
    assert [rid for rid, _ in placer.refusals] == [b.id]
    assert b.runner.slots_used == 1  # only its own session


async def test_a_session_that_ends_mid_move_releases_its_new_placement(bed: Bed) -> None:
    a, b = await bed.replica(), await bed.replica()
    placer = bed.placer(a, b)
    placer.hold = asyncio.Event()
    talker = await bed.talker(placer, "s-ends", seed=5)
    await started(talker)

    a.drain()
    await asyncio.wait_for(placer.holding.wait(), 5)  # admitted on b, not handed to the stream yet
    assert b.runner.slots_used == 1
    closing = asyncio.get_running_loop().create_task(talker.stream.close())
    await asyncio.sleep(0)
    placer.hold.set()
    await asyncio.wait_for(closing, 5)
    new = placer.placed[-1]
    assert new.replica is b
    assert await asyncio.wait_for(asyncio.shield(new.lease.ended), 5) is EndReason.RELEASED
    assert (a.runner.slots_used, b.runner.slots_used) == (0, 0)
    assert await talker.ended() is None  # frames() simply ends
    assert not bed.moves.moved and not bed.moves.failed


async def test_input_that_arrives_during_a_move_is_kept_and_stepped_after(bed: Bed) -> None:
    a, b = await bed.replica(), await bed.replica()
    placer = bed.placer(a, b)
    placer.hold = asyncio.Event()
    talker = await bed.talker(placer, "s-keeps", seed=6)
    await started(talker)

    a.drain()
    await asyncio.wait_for(placer.holding.wait(), 5)
    await talker.send(5)  # nowhere to go yet: kept by the stream
    await asyncio.sleep(2 * PERIOD_S)
    assert talker.steps == FRAMES_BEFORE  # nothing stepped meanwhile
    placer.hold.set()
    await talker.stepped_all()
    assert talker.steps == talker.sent == FRAMES_BEFORE + 5
    assert talker.stream.placement.replica_id == b.id
    assert [why for _, why, _ in bed.moves.moved] == ["drain"]


# --- a move goes only where it fits ------------------------------------------------------------------------


def slow_ticks(replica: Replica, monkeypatch: pytest.MonkeyPatch, extra_s: float) -> None:
    """Every tick of the replica takes at least `extra_s` (a loaded machine, a bigger model)."""
    real_tick = replica.engine.tick

    def slow_tick() -> dict[int, EngineFrame]:
        time.sleep(extra_s)
        return real_tick()

    monkeypatch.setattr(replica.engine, "tick", slow_tick)


async def busy(bed: Bed, replica: Replica, seed: int) -> Talker:
    """A live session on the replica, speaking in real time: the ticks its budget judges by."""
    talker = await bed.talker(bed.placer(replica), f"s-lives-on-{replica.id}", seed=seed)
    talker.speak()
    await talker.until(lambda: talker.steps >= 4)
    return talker


@pytest.mark.parametrize("elsewhere", [True, False], ids=["another-replica-has-room", "none-has-room"])
async def test_a_replica_whose_ticks_leave_no_room_to_catch_up_refuses_the_resume(
    bed: Bed, monkeypatch: pytest.MonkeyPatch, elsewhere: bool
) -> None:
    a = await bed.replica()
    # b's ticks fit one more session in its budget (the whole period), but not catching up on a backlog:
    # the clock catches up only while a tick takes < 60 % of the period.
    b = await bed.replica(admit_fraction=1.0)
    slow_ticks(b, monkeypatch, extra_s=CATCH_UP_FRACTION * PERIOD_S + 0.002)
    placer = bed.placer(a, b, *([await bed.replica()] if elsewhere else []))
    talker = await bed.talker(placer, "s-resumes", seed=7)
    neighbour = await busy(bed, b, seed=8)
    await started(talker)
    assert b.runner.capacity().tick_p90_s > CATCH_UP_FRACTION * PERIOD_S

    await a.kill()
    await talker.send(2)
    if elsewhere:
        c = placer.replicas[2]
        await talker.until(lambda: bool(bed.moves.moved))
        await talker.stepped_all()
        assert talker.stream.placement.replica_id == c.id
        assert talker.steps == talker.sent and talker.error is None
    else:
        killed = time.monotonic()
        error = await talker.ended()
        assert isinstance(error, SessionLost) and time.monotonic() - killed < 1.0
        assert bed.moves.failed == [(MODEL, "server_at_capacity")]
    ((refused_by, why),) = placer.refusals
    assert refused_by == b.id and "catch up never" in why, why
    assert b.runner.slots_used == 1  # b took nothing: its own session goes on in real time
    stepped = neighbour.steps
    await neighbour.until(lambda: neighbour.steps >= stepped + 3)
    assert neighbour.error is None


# --- the catch-up judgement, in numbers ------------------------------------------------------------------


def test_catch_up_takes_the_backlog_times_the_ticks_share_of_the_spare_time() -> None:
    assert catch_up_s(0.02, 1.2, period_s=0.08, catch_up_fraction=0.6) == pytest.approx(0.4)
    assert catch_up_s(0.04, 1.2, period_s=0.08, catch_up_fraction=0.6) == pytest.approx(1.2)
    assert catch_up_s(0.048, 0.5, period_s=0.08, catch_up_fraction=0.6) == math.inf  # no back-to-back ticks
    assert catch_up_s(0.07, 0.0, period_s=0.08, catch_up_fraction=0.6) == 0.0  # nothing to catch up


def report(p90_s: float, slope_s: float = 0.0, used: int = 2) -> CapacityReport:
    return CapacityReport(4, used, p90_s, p90_s, slope_s, 4, admitting=True)


@pytest.fixture
def budget() -> Iterator[TickBudget]:
    yield TickBudget(4, admit_fraction=0.7, period_s=0.08)


def test_a_resume_is_judged_on_its_catch_up_where_a_new_session_would_fit(budget: TickBudget) -> None:
    # Ticks of 45 ms fit a new session (56 ms budget) and catch up 1 s of backlog in 1.3 s.
    assert budget.resume_refusal(report(0.04, 0.005), 1.0, catch_up_fraction=0.6) is None
    # The same ticks cannot catch up 3 s of backlog within MAX_CATCH_UP_S.
    assert MAX_CATCH_UP_S < 3.0 * 0.045 / (0.08 - 0.045)
    refusal = budget.resume_refusal(report(0.04, 0.005), 3.0, catch_up_fraction=0.6)
    assert refusal is not None and "in 3.9 s" in refusal and "3000 ms behind" in refusal
    # Ticks of 50 ms still fit a new session, but leave no room to catch up at all.
    refusal = budget.resume_refusal(report(0.05), 0.1, catch_up_fraction=0.6)
    assert refusal is not None and "catch up never" in refusal


def test_a_resume_has_the_exemptions_of_a_new_session(budget: TickBudget) -> None:
    slow = report(0.075)
    assert budget.resume_refusal(report(0.075, used=0), 5.0, catch_up_fraction=0.6) is None  # empty replica
    assert TickBudget(4, admit_fraction=None).resume_refusal(slow, 5.0, catch_up_fraction=0.6) is None
    assert budget.resume_refusal(slow, 5.0, catch_up_fraction=0.6) is not None
