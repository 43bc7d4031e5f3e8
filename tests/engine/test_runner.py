import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psutil
import pytest
import torch

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.batch import BatchedEngine, NoFreeSlot
from serve_app.engine.capacity import TickBudget
from serve_app.engine.errors import FellBehind, TickBudgetFull, TickFailed
from serve_app.engine.history import SessionHistory
from serve_app.engine.loader import LoadedModel
from serve_app.engine.port import EngineFrame
from serve_app.engine.runner import ClockedRunner
from serve_app.engine.spec import SamplingParams
from serve_app.engine.tick_stats import TickOutput, TickStats
from tests.engine.support import noise


class Inbox:
    """Collects one slot's callbacks (they arrive on the runner thread)."""

    def __init__(self) -> None:
        self.frames: list[EngineFrame] = []
        self.errors: list[BaseException] = []
        self.threads: set[str] = set()
        self.changed = threading.Condition()

    def on_frame(self, frame: EngineFrame) -> None:
        with self.changed:
            self.frames.append(frame)
            self.threads.add(threading.current_thread().name)
            self.changed.notify_all()

    def on_error(self, exc: BaseException) -> None:
        with self.changed:
            self.errors.append(exc)
            self.changed.notify_all()

    def wait_frames(self, count: int, timeout: float = 20.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.frames) >= count, timeout), len(self.frames)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """What a model replica gets (Ray sets OMP_NUM_THREADS=1 for num_cpus ≤ 1). With 2 threads, a tick on
    the runner's (non-main) thread measured 40–70 ms against 28 ms on the main thread on the 2-core VM,
    which would leave no room for catching up."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def engine(tiny_model: LoadedModel) -> Iterator[BatchedEngine]:
    with BatchedEngine(tiny_model, slots=2, sampling=SamplingParams(use_sampling=False)) as engine:
        engine.warmup()
        yield engine


@pytest.fixture
def ticks() -> list[TickStats]:
    return []


@pytest.fixture
def runner(engine: BatchedEngine, ticks: list[TickStats]) -> Iterator[ClockedRunner]:
    runner = ClockedRunner(engine, period_s=0.08, on_tick=ticks.append)
    runner.start()
    yield runner
    runner.stop()
    assert not runner.running


def test_delivers_frames_at_the_period(runner: ClockedRunner, ticks: list[TickStats]) -> None:
    assert runner.ready and (runner.slots_used, runner.slots_total) == (0, 2)
    inbox = Inbox()
    slot = runner.open_slot(inbox.on_frame, on_error=inbox.on_error)
    assert runner.slots_used == 1
    started = time.monotonic()
    runner.push(slot, noise(12, seed=1))
    inbox.wait_frames(11)  # the first step of a session yields nothing
    elapsed = time.monotonic() - started
    assert inbox.threads == {"engine-clock"} and not inbox.errors
    assert all(frame.pcm.shape == (1920,) for frame in inbox.frames)
    assert 11 * 0.08 * 0.8 < elapsed < 10  # clocked, not free-running
    stepped = [t for t in ticks if t.stepped_slots]
    assert len(stepped) >= 11 and all(t.active_slots == 1 for t in stepped)
    stats = runner.stats()
    assert stats.ticks == 11 and len(stats.recent_durations_s) == 11  # ticks that produced frames
    assert 0 < stats.p50_s <= stats.p99_s and stats.period_s == 0.08
    assert stats.late_ticks == sum(t.late for t in stepped)
    runner.close_slot(slot)


def test_idles_without_slots(runner: ClockedRunner, ticks: list[TickStats]) -> None:
    time.sleep(0.3)
    assert ticks == []  # never ticks with no slot open
    inbox = Inbox()
    slot = runner.open_slot(inbox.on_frame)
    runner.push(slot, noise(3, seed=2))
    inbox.wait_frames(2)
    runner.close_slot(slot)
    time.sleep(0.2)  # let an in-flight wait finish
    count = len(ticks)
    cpu_before = psutil.Process().cpu_times()
    time.sleep(0.5)
    cpu_after = psutil.Process().cpu_times()
    assert len(ticks) == count  # idle again: no ticks
    assert (cpu_after.user + cpu_after.system) - (
        cpu_before.user + cpu_before.system
    ) < 0.1  # and no busy loop


def test_close_and_reopen(runner: ClockedRunner) -> None:
    first = Inbox()
    slot = runner.open_slot(first.on_frame)
    runner.push(slot, noise(40, seed=3))
    first.wait_frames(3)
    runner.close_slot(slot)
    seen = len(first.frames)
    second = Inbox()
    again = runner.open_slot(second.on_frame)
    assert again == slot  # the freed slot is reused, with its rows reset
    runner.push(again, noise(4, seed=5))
    second.wait_frames(3)
    assert len(first.frames) == seen  # nothing for the old session after close_slot returned
    runner.close_slot(again)


def test_only_ticks_that_stepped_a_slot_count() -> None:
    """The one rule the runner's stats, the replica's metrics and its tick durations all read."""
    assert not TickStats(duration_s=0.001, active_slots=2, stepped_slots=0, late=False).counts
    assert TickStats(duration_s=0.09, active_slots=2, stepped_slots=1, late=True).counts


def test_tagged_slots_hand_a_ticks_frames_over_once_by_tag(runner: ClockedRunner) -> None:
    """A slot opened with a tag has no frame callback: its frames come in the tick's one `TickOutput`, named
    by the tag, so a slot reused by another session cannot take the old session's frames."""
    outputs: list[TickOutput] = []
    arrived = threading.Condition()

    def on_output(output: TickOutput) -> None:
        with arrived:
            outputs.append(output)
            arrived.notify_all()

    def tagged(tag: int) -> int:
        return sum(t == tag for output in outputs for t, _ in output.frames)

    runner.add_output_listener(on_output)
    with pytest.raises(ValueError, match="either"):
        runner.open_slot(None)
    inbox = Inbox()
    beside = runner.open_slot(inbox.on_frame)
    slot = runner.open_slot(None, tag=7)
    runner.push(beside, noise(6, seed=11))
    runner.push(slot, noise(4, seed=12))
    with arrived:
        assert arrived.wait_for(lambda: tagged(7) >= 3, 20.0), outputs
    runner.close_slot(slot)
    assert runner.open_slot(None, tag=8) == slot  # the same slot, another session
    runner.push(slot, noise(4, seed=13))
    with arrived:
        assert arrived.wait_for(lambda: tagged(8) >= 3, 20.0), outputs
    runner.close_slot(slot)
    runner.close_slot(beside)
    assert tagged(7) <= 4 and inbox.frames  # the callback slot's frames went to its callback only
    for output in outputs:
        tags = [t for t, _ in output.frames]
        assert output.stats.counts and len(tags) == len(set(tags)) and set(tags) <= {7, 8}
        assert all(frame.pcm.shape == (FRAME_SAMPLES,) for _, frame in output.frames)


def test_full_runner_raises(runner: ClockedRunner) -> None:
    slots = [runner.open_slot(Inbox().on_frame) for _ in range(2)]
    with pytest.raises(NoFreeSlot):
        runner.open_slot(Inbox().on_frame)
    for slot in slots:
        runner.close_slot(slot)


def test_late_ticks_are_counted(engine: BatchedEngine) -> None:
    runner = ClockedRunner(engine, period_s=0.001)  # every real tick overruns 1 ms
    runner.start()
    try:
        inbox = Inbox()
        slot = runner.open_slot(inbox.on_frame)
        runner.push(slot, noise(5, seed=6))
        inbox.wait_frames(4)
        stats = runner.stats()
        assert stats.late_ticks >= 4 and stats.late_ticks <= stats.ticks
    finally:
        runner.stop()


def test_tick_failure_is_reported_and_runner_survives(
    runner: ClockedRunner, engine: BatchedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = Inbox(), Inbox()
    real_tick = engine.tick
    failures = iter([RuntimeError("boom")])

    def flaky_tick() -> dict[int, EngineFrame]:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real_tick()

    monkeypatch.setattr(engine, "tick", flaky_tick)
    slot_a = runner.open_slot(a.on_frame, on_error=a.on_error)
    slot_b = runner.open_slot(b.on_frame, on_error=b.on_error)
    with a.changed:
        assert a.changed.wait_for(lambda: a.errors, 5)
    with b.changed:
        assert b.changed.wait_for(lambda: b.errors, 5)  # every open slot hears about it
    assert isinstance(a.errors[0], TickFailed) and str(a.errors[0].__cause__) == "boom"
    assert runner.running and runner.stats().errors == 1
    runner.push(slot_a, noise(3, seed=7))  # a late push from a failed session is dropped, not an error
    assert runner.slots_used == 2  # held until the owners close them...
    runner.close_slot(slot_a)
    runner.close_slot(slot_b)
    assert runner.slots_used == 0  # ...then free again
    c = Inbox()
    slot = runner.open_slot(c.on_frame, on_error=c.on_error)
    runner.push(slot, noise(3, seed=8))
    c.wait_frames(2)  # new sessions are served
    assert not c.errors
    runner.close_slot(slot)


def test_bad_callback_does_not_kill_the_clock(runner: ClockedRunner) -> None:
    def explode(frame: EngineFrame) -> None:
        raise ValueError("callback bug")

    bad = runner.open_slot(explode)
    good = Inbox()
    slot = runner.open_slot(good.on_frame)
    runner.push(bad, noise(4, seed=9))
    runner.push(slot, noise(4, seed=10))
    good.wait_frames(3)
    assert runner.running
    runner.close_slot(bad)
    runner.close_slot(slot)


def test_frames_are_float32_pcm(runner: ClockedRunner) -> None:
    inbox = Inbox()
    slot = runner.open_slot(inbox.on_frame)
    runner.push(slot, noise(3, seed=11))
    inbox.wait_frames(2)
    assert all(f.pcm.dtype == np.float32 for f in inbox.frames)
    runner.close_slot(slot)


def test_overdue_input_is_caught_up_faster_than_real_time(runner: ClockedRunner) -> None:
    """Input that waited through a stall (stamped 1 s ago) is stepped back to back, not 80 ms apart."""
    inbox = Inbox()
    slot = runner.open_slot(inbox.on_frame, on_error=inbox.on_error)
    started = time.monotonic()
    runner.push(slot, noise(13, seed=20), now=started - 1.04)  # 13 frames, all due by now
    inbox.wait_frames(12)
    took = time.monotonic() - started
    assert took < 0.6, f"{took:.2f} s for 12 overdue frames (real time would take 0.96 s)"
    assert not inbox.errors


def test_input_sent_ahead_of_real_time_is_not_late(runner: ClockedRunner) -> None:
    """A client sending faster than real time queues frames due in the future: stepped at the period."""
    inbox = Inbox()
    slot = runner.open_slot(inbox.on_frame, on_error=inbox.on_error)
    started = time.monotonic()
    runner.push(slot, noise(10, seed=21))
    inbox.wait_frames(9)
    assert time.monotonic() - started > 0.6  # ≈ 9 × 80 ms, not back to back


class SlowEngine:
    """Makes every tick take `delay_s` longer: a replica that cannot keep up."""

    def __init__(self, engine: BatchedEngine, delay_s: float) -> None:
        self._engine = engine
        self._delay_s = delay_s

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)

    def tick(self) -> dict[int, EngineFrame]:
        time.sleep(self._delay_s)
        return self._engine.tick()


def test_a_session_that_cannot_catch_up_is_ended_past_the_lag_limit(engine: BatchedEngine) -> None:
    slow: Any = SlowEngine(engine, delay_s=0.12)  # every tick 120+ ms: a paced session falls behind
    runner = ClockedRunner(slow, period_s=0.08, max_lag_s=0.3)
    runner.start()
    try:
        inbox = Inbox()
        slot = runner.open_slot(inbox.on_frame, on_error=inbox.on_error)
        deadline = time.monotonic() + 10
        while not inbox.errors and time.monotonic() < deadline:
            runner.push(slot, noise(1, seed=22))  # paced input, one frame per period
            time.sleep(0.08)
        assert inbox.errors, "the session was never ended"
        (error,) = inbox.errors
        assert isinstance(error, FellBehind) and error.lag_s > 0.3
        runner.push(slot, noise(1, seed=23))  # a late push from the ended session goes nowhere
        runner.close_slot(slot)
        assert runner.slots_used == 0
    finally:
        runner.stop()


def test_budget_refuses_a_session_its_recent_ticks_cannot_fit(engine: BatchedEngine) -> None:
    runner = ClockedRunner(engine, period_s=0.08, budget=TickBudget(2, admit_fraction=0.01))  # 0.8 ms
    runner.start()
    try:
        first = Inbox()
        slot = runner.open_slot(first.on_frame, check_budget=True)  # nothing measured yet: admitted
        runner.push(slot, noise(6, seed=24))
        first.wait_frames(4)
        with pytest.raises(TickBudgetFull):
            runner.open_slot(Inbox().on_frame, check_budget=True)
        assert runner.slots_used == 1
        runner.open_slot(Inbox().on_frame)  # without the check only slots bound it
    finally:
        runner.stop()


def test_a_resumed_session_is_rebuilt_between_ticks_and_catches_up(
    runner: ClockedRunner, engine: BatchedEngine
) -> None:
    """The clock rebuilds the slot in the time its ticks leave, tells the owner, then steps the window's
    pending input (as late as it is old) back to back; the session beside it keeps getting frames."""
    assert engine.history_spec is not None
    history = SessionHistory(engine.history_spec)
    first = Inbox()
    slot = runner.open_slot(first.on_frame, on_error=first.on_error)
    audio = noise(60, seed=21)
    history.add_input(audio[: 30 * FRAME_SAMPLES], now=time.monotonic())
    runner.push(slot, audio[: 30 * FRAME_SAMPLES])
    first.wait_frames(29)
    runner.close_slot(slot)
    for frame in first.frames:
        history.add_records(frame.history)
    history.add_input(audio[30 * FRAME_SAMPLES :], now=time.monotonic() - 1.0)  # sent a second ago
    window = history.window(now=time.monotonic())
    assert window.steps == 30 and window.pending_age_s >= 1.0

    neighbour = Inbox()
    beside = runner.open_slot(neighbour.on_frame)
    runner.push(beside, noise(200, seed=22))
    neighbour.wait_frames(5)
    rebuilt = threading.Event()
    moved = Inbox()
    started = time.monotonic()
    rebuilt_at: list[float] = []

    def on_rebuilt(job: object) -> None:
        rebuilt_at.append(time.monotonic())
        rebuilt.set()

    runner.open_slot(moved.on_frame, on_error=moved.on_error, resume=window, on_rebuilt=on_rebuilt)
    assert rebuilt.wait(10)
    moved.wait_frames(30)
    took = time.monotonic() - started
    # Caught up: the 30 pending frames (2.4 s of speech) are stepped faster than they were spoken. The
    # rebuild's own time depends on the machine (it runs in the room the neighbour's ticks leave).
    stepping = time.monotonic() - rebuilt_at[0]
    assert stepping < 2.4, f"{stepping:.2f} s to step 30 pending frames after the rebuild (real time: 2.4 s)"
    assert not moved.errors
    with neighbour.changed:
        during = len(neighbour.frames)
    assert during >= 5 + int(took / 0.08) - 3  # the neighbour kept real time meanwhile
