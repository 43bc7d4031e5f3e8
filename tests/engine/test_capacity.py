"""TickBudget: admission verdicts from recent ticks (pure, with explicit clocks)."""

from __future__ import annotations

import pytest

from serve_app.engine.capacity import STALE_AFTER_S, TickBudget

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
