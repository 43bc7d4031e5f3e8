"""How many sessions a replica can keep in real time, judged from the ticks it actually ran.

A tick steps the whole batch, so its cost barely depends on how many slots are active; what grows with
load is contention (other replicas, the ingress, the transport on the same cores). So the judgement is
empirical: recent busy ticks against a share of the 80 ms period, plus the per-session slope of tick
time seen across recent loads, which is what one more session is expected to add; and sessions already
behind (input queued past due) mean no room. Admissions are paced (`AdmissionGate`): one at a time, in
doubling steps, each step measured by a few ticks before the next, so a burst of arrivals is judged on
ticks that include its first members. A session resumed from another replica is judged like a new one
and, besides, on its catch-up (`TickBudget.resume_refusal`): it arrives behind real time, by the input it
missed while it moved, and must step that backlog faster than real time.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from serve_app.constants import FRAME_S

DEFAULT_ADMIT_FRACTION = 0.7
"""Admit while the predicted tick stays under this share of the period: the rest absorbs jitter."""
WINDOW_TICKS = 50
"""Recent busy ticks considered (4 s at one tick per 80 ms)."""
STALE_AFTER_S = 2.0
"""Ticks older than this say nothing about now (the replica idled, or its neighbours' load changed)."""
EVIDENCE_TICKS = 3
"""Busy ticks that measure a step of admissions before the next step. Sessions that arrive together would
otherwise all be admitted on evidence from before any of them (docs/ARCHITECTURE.md, "Capacity"). Steps
double, like TCP's slow start: with k sessions measured, up to k more are admitted before new evidence
(1, 1, 2, 4, 8, …), so a burst of 16 on an idle replica is judged in five steps, not sixteen."""
EVIDENCE_WAIT_S = 1.0
"""The longest an admission waits for that evidence; then it is judged on what there is."""
MAX_ADMIT_LAG_S = 2 * FRAME_S
"""A replica whose oldest queued frame is further past due than this is behind: it admits no one.
(Up to one period is normal: a frame arriving just after a tick waits for the next.)"""
MAX_CATCH_UP_S = 3.0
"""A resumed session must be expected back in real time within this. Until then its answers come late (past
the lag limit at first) and the clock runs back-to-back ticks, which its neighbours on the cores pay for;
a replica that would take longer refuses it, as one without room refuses a new session."""


def catch_up_s(tick_s: float, backlog_s: float, *, period_s: float, catch_up_fraction: float) -> float:
    """How long a session `backlog_s` behind real time takes to catch up, when each tick takes `tick_s`.

    Behind, the clock ticks back to back, but only while a tick takes less than `catch_up_fraction` of the
    period (ClockedRunner's rule, so catching up never starves the schedule): each tick steps one frame
    of the backlog while new input keeps arriving, one frame per period. So the backlog shrinks by
    `period_s / tick_s - 1` frames per period; `inf` when the ticks are too long to catch up at all."""
    if backlog_s <= 0:
        return 0.0
    if tick_s >= catch_up_fraction * period_s:
        return math.inf
    return backlog_s * tick_s / (period_s - tick_s)


@dataclass(frozen=True, slots=True)
class CapacityReport:
    """What the replica says about itself (metrics, status endpoint, admission)."""

    slots_total: int
    slots_used: int
    tick_p50_s: float
    tick_p90_s: float
    per_session_s: float
    """Tick time one more session is expected to add (slope over recent loads, ≥ 0)."""
    capacity: int
    """Sessions the replica expects to hold in real time (≤ slots_total)."""
    admitting: bool
    lag_s: float = 0.0
    """How far the oldest queued input frame of any session is past due."""
    settling: bool = False
    """The current step of admissions is full and not yet measured: the next admission should wait."""


class TickBudget:
    """Recent (duration, active sessions) of busy ticks → admission verdicts. Thread-safe."""

    def __init__(
        self,
        slots_total: int,
        *,
        admit_fraction: float | None = DEFAULT_ADMIT_FRACTION,
        period_s: float = FRAME_S,
        window: int = WINDOW_TICKS,
    ) -> None:
        """`admit_fraction` None: judge and report, but admit on free slots alone."""
        if admit_fraction is not None and not 0 < admit_fraction <= 1:
            raise ValueError(f"admit_fraction must be in (0, 1], got {admit_fraction}")
        self._slots = slots_total
        self._enforced = admit_fraction is not None
        self._period_s = period_s
        self._budget_s = (admit_fraction or 1.0) * period_s
        self._lock = threading.Lock()
        self._ticks: deque[tuple[float, float, int]] = deque(maxlen=window)
        """(monotonic time, duration, active sessions) of recent busy ticks."""
        self._step_started = float("-inf")
        """When the current step of admissions began (its first admission)."""
        self._step_base = 0
        """Sessions held before the step: what the evidence before it measured."""
        self._step_admitted = 0

    @property
    def budget_s(self) -> float:
        return self._budget_s

    def record(self, duration_s: float, active: int, now: float | None = None) -> None:
        if active > 0:
            at = time.monotonic() if now is None else now
            with self._lock:
                self._ticks.append((at, duration_s, active))

    def admitted(self, held_before: int, now: float | None = None) -> None:
        """A session was just admitted to a replica that held `held_before`."""
        at = time.monotonic() if now is None else now
        with self._lock:
            if self._step_measured(at):
                self._step_started, self._step_base, self._step_admitted = at, held_before, 1
            else:
                self._step_admitted += 1

    def _step_measured(self, at: float) -> bool:
        evidence = sum(1 for t, _, _ in self._ticks if t > self._step_started)
        return evidence >= EVIDENCE_TICKS or at - self._step_started >= EVIDENCE_WAIT_S

    def reset(self) -> None:
        """Forget the past (e.g. once the replica went idle: its contention then is not today's)."""
        with self._lock:
            self._ticks.clear()

    def report(self, slots_used: int, lag_s: float = 0.0, now: float | None = None) -> CapacityReport:
        at = time.monotonic() if now is None else now
        with self._lock:
            while self._ticks and self._ticks[0][0] < at - STALE_AFTER_S:
                self._ticks.popleft()
            ticks = [(d, n) for _, d, n in self._ticks]
            step_full = self._step_admitted >= max(1, self._step_base)
            settling = step_full and not self._step_measured(at)
        free = slots_used < self._slots
        settling = settling and self._enforced and slots_used > 0 and free
        if not ticks:
            # Nothing measured under load yet: free slots are all we know.
            return CapacityReport(self._slots, slots_used, 0.0, 0.0, 0.0, self._slots, free, lag_s, settling)
        durations = np.array([d for d, _ in ticks])
        loads = np.array([n for _, n in ticks], dtype=float)
        p50, p90 = (float(v) for v in np.percentile(durations, [50, 90]))
        slope = 0.0
        if loads.std() > 0:
            slope = max(0.0, float(np.polyfit(loads, durations, 1)[0]))
        current = int(loads[-1])
        if slope > 0:
            # The fit's rounding (a slope of 2.0000000000000013 ms for 2 ms) must not cost a whole session.
            capacity = current + int(np.floor((self._budget_s - p90) / slope + 1e-9))
        else:
            capacity = self._slots if p90 <= self._budget_s else current
        capacity = max(0, min(self._slots, capacity))
        # An empty replica admits: the ticks it remembers were paid for by sessions that have left, and
        # a deployment must not refuse everyone forever on old evidence (the lag limit still guards it).
        fits = p90 + slope <= self._budget_s and lag_s <= MAX_ADMIT_LAG_S
        admitting = free and (not self._enforced or slots_used == 0 or fits)
        return CapacityReport(self._slots, slots_used, p50, p90, slope, capacity, admitting, lag_s, settling)

    def resume_refusal(
        self, report: CapacityReport, backlog_s: float, *, catch_up_fraction: float
    ) -> str | None:
        """Why a session resumed `backlog_s` behind real time does not fit (None: it does), beyond what a
        new session is judged on (`report.admitting`, which it must pass too).

        With it, a tick is expected to take what the admission of a new one predicts (p90 + the
        per-session slope); it fits if the ticks leave room to catch up within `MAX_CATCH_UP_S`. The same
        exemptions as a new session's hold: a budget not enforced, an empty replica."""
        if not self._enforced or report.slots_used == 0:
            return None
        tick = report.tick_p90_s + report.per_session_s
        took = catch_up_s(tick, backlog_s, period_s=self._period_s, catch_up_fraction=catch_up_fraction)
        if took <= MAX_CATCH_UP_S:
            return None
        when = "never" if math.isinf(took) else f"in {took:.1f} s"
        return (
            f"a resumed session {1000 * backlog_s:.0f} ms behind would catch up {when} with ticks of "
            f"{1000 * tick:.1f} ms (p90 + per session) beside {report.slots_used} sessions "
            f"(limit {MAX_CATCH_UP_S:g} s)"
        )


T = TypeVar("T")


class AdmissionGate:
    """One admission at a time per replica, and each step of admissions after ticks that measure the last.

    `admit(open_slot)` waits (at most `EVIDENCE_WAIT_S`) while the budget is `settling` (the current step
    is full and not yet measured), then calls `open_slot`, which judges the budget and raises if there is
    no room. Asyncio only.
    """

    def __init__(self, report: Callable[[], CapacityReport], *, poll_s: float = FRAME_S / 4) -> None:
        self._report = report
        self._poll_s = poll_s
        self._lock = asyncio.Lock()

    async def admit(self, open_slot: Callable[[], T]) -> T:
        async with self._lock:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + EVIDENCE_WAIT_S
            while self._report().settling and loop.time() < deadline:
                await asyncio.sleep(self._poll_s)
            return open_slot()
