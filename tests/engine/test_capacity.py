"""TickBudget: admission verdicts from recent ticks (pure, with explicit clocks)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_app.engine.capacity import (
    EVIDENCE_TICKS,
    EVIDENCE_WAIT_S,
    MAX_ADMIT_LAG_S,
    STALE_AFTER_S,
    AdmissionGate,
    TickBudget,
)
from serve_app.engine.errors import NoFreeSlot

PERIOD = 0.08


def test_nothing_measured_admits_on_free_slots() -> None:
    budget = TickBudget(4)
    assert budget.report(0, now=0.0).admitting
    assert budget.report(3, now=0.0).admitting
    assert not budget.report(4, now=0.0).admitting  # slots are still a hard bound


def test_ticks_over_the_budget_refuse_while_the_replica_holds_sessions() -> None:
    budget = TickBudget(8, admit_fraction=0.5)  # 40 ms
    for i in range(20):
        budget.record(0.045, active=2, now=i * PERIOD)
    report = budget.report(2, now=20 * PERIOD)
    assert not report.admitting and report.tick_p90_s == pytest.approx(0.045)
    # An empty replica admits: those ticks were paid for by sessions that left.
    assert budget.report(0, now=20 * PERIOD).admitting


def test_the_per_session_slope_is_what_one_more_session_is_expected_to_add() -> None:
    budget = TickBudget(16, admit_fraction=0.5)  # 40 ms
    now = 0.0
    for active in range(1, 7):  # 10 ms + 5 ms per session: 35 ms at 5, 40 ms at 6
        for _ in range(5):
            budget.record(0.010 + 0.005 * active, active=active, now=now)
            now += PERIOD
    report = budget.report(6, now=now)
    assert report.per_session_s == pytest.approx(0.005, rel=0.05)
    assert report.tick_p90_s == pytest.approx(0.040, abs=1e-3)
    assert not report.admitting  # 40 + 5 > 40
    assert report.capacity == 6


def test_under_the_budget_admits_and_estimates_capacity() -> None:
    budget = TickBudget(32, admit_fraction=0.7)  # 56 ms
    now = 0.0
    for active in (2, 3, 4):
        for _ in range(5):
            budget.record(0.020 + 0.002 * active, active=active, now=now)
            now += PERIOD
    report = budget.report(4, now=now)
    assert report.admitting
    # (56 - 28) / 2 = 14 more than the 4 held.
    assert report.capacity == 18


def test_old_ticks_say_nothing_about_now() -> None:
    budget = TickBudget(4, admit_fraction=0.5)
    for i in range(10):
        budget.record(0.2, active=1, now=i * PERIOD)
    assert not budget.report(1, now=10 * PERIOD).admitting
    later = 10 * PERIOD + STALE_AFTER_S + 0.1
    assert budget.report(1, now=later).admitting
    assert budget.report(1, now=later).tick_p90_s == 0.0


def test_not_enforced_reports_but_admits_on_slots() -> None:
    budget = TickBudget(4, admit_fraction=None)
    for i in range(10):
        budget.record(0.2, active=1, now=i * PERIOD)
    report = budget.report(1, now=10 * PERIOD)
    assert report.admitting and report.tick_p90_s == pytest.approx(0.2)
    assert not budget.report(4, now=10 * PERIOD).admitting


def test_fraction_is_validated() -> None:
    with pytest.raises(ValueError):
        TickBudget(4, admit_fraction=0.0)


def test_an_admission_settles_after_ticks_that_include_it() -> None:
    budget = TickBudget(4)
    budget.admitted(0, now=1.0)
    assert not budget.report(0, now=1.0).settling  # an empty replica admits at once
    assert budget.report(1, now=1.0).settling
    for k in range(1, EVIDENCE_TICKS + 1):
        assert budget.report(1, now=1.0 + k * PERIOD).settling
        budget.record(0.01, active=1, now=1.0 + k * PERIOD)
    assert not budget.report(1, now=1.0 + 4 * PERIOD).settling
    assert not budget.report(4, now=1.0).settling  # full: nothing to wait for


def test_admission_steps_double_with_the_load_measured() -> None:
    """1, 1, 2, 4: with k sessions measured, k more are admitted before the next evidence."""
    budget = TickBudget(16)
    now, held, steps = 0.0, 0, []
    for _ in range(4):
        step = 0
        while not budget.report(held, now=now).settling:
            budget.admitted(held, now=now)
            held, step = held + 1, step + 1
        steps.append(step)
        for _ in range(EVIDENCE_TICKS):
            now += PERIOD
            budget.record(0.01, active=held, now=now)
        now += 0.001
    assert steps == [1, 1, 2, 4]


def test_settling_gives_up_when_no_ticks_come() -> None:
    budget = TickBudget(4)
    budget.admitted(0, now=1.0)
    assert not budget.report(1, now=1.0 + EVIDENCE_WAIT_S).settling
    assert not TickBudget(4, admit_fraction=None).report(1, now=0.0).settling  # not enforced: no pacing


def test_sessions_behind_schedule_leave_no_room() -> None:
    budget = TickBudget(8, admit_fraction=0.5)
    for i in range(10):
        budget.record(0.01, active=2, now=i * PERIOD)
    assert budget.report(2, lag_s=MAX_ADMIT_LAG_S, now=10 * PERIOD).admitting
    report = budget.report(2, lag_s=MAX_ADMIT_LAG_S + 0.01, now=10 * PERIOD)
    assert not report.admitting and report.lag_s > MAX_ADMIT_LAG_S


async def test_the_gate_admits_a_burst_in_steps_after_their_ticks() -> None:
    """Four concurrent admissions on an idle replica: steps of 1, 1 and 2, each after EVIDENCE_TICKS
    ticks that include the step before; the two of the last step at once."""
    budget = TickBudget(8)
    sessions = 0
    admitted_at: list[float] = []
    loop = asyncio.get_running_loop()

    def open_slot() -> int:
        nonlocal sessions
        budget.admitted(sessions)
        sessions += 1
        admitted_at.append(loop.time())
        return sessions - 1

    async def clock() -> None:
        while True:
            await asyncio.sleep(0.01)
            budget.record(0.001, active=max(1, sessions))

    gate = AdmissionGate(lambda: budget.report(sessions), poll_s=0.002)
    ticking = asyncio.create_task(clock())
    try:
        slots = await asyncio.gather(*(gate.admit(open_slot) for _ in range(4)))
    finally:
        ticking.cancel()
    assert sorted(slots) == [0, 1, 2, 3]
    gaps = np.diff(admitted_at)
    assert (gaps[:2] >= (EVIDENCE_TICKS - 1) * 0.01).all() and gaps[2] < 0.005, gaps


async def test_the_gate_passes_refusals_through() -> None:
    budget = TickBudget(1)
    gate = AdmissionGate(lambda: budget.report(1))

    def full() -> int:
        raise NoFreeSlot("all 1 slots are in use")

    started = asyncio.get_running_loop().time()
    with pytest.raises(NoFreeSlot):
        await gate.admit(full)
    assert asyncio.get_running_loop().time() - started < 0.05  # a full replica refuses without waiting
