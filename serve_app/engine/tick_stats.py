"""What the engine clock (serve_app/engine/runner.py) reports: each tick's statistics and frames, its running
totals, and the types of the callbacks it calls on its thread."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from serve_app.engine.port import EngineFrame

if TYPE_CHECKING:  # torch-free at run time: the metrics and the ingress read these types too
    from serve_app.engine.rebuild import SlotRebuild

__all__ = [
    "ErrorCallback",
    "FrameCallback",
    "OutputListener",
    "RebuiltCallback",
    "RunnerStats",
    "TickListener",
    "TickOutput",
    "TickStats",
]

FrameCallback = Callable[[EngineFrame], None]
ErrorCallback = Callable[[BaseException], None]
RebuiltCallback = Callable[["SlotRebuild"], None]


@dataclass(frozen=True, slots=True)
class TickStats:
    duration_s: float
    active_slots: int
    """Slots open when the tick started."""
    stepped_slots: int
    """Slots that had a frame queued and were stepped."""
    late: bool
    """The tick took longer than the period."""

    @property
    def counts(self) -> bool:
        """Whether the tick enters the statistics (budget, histograms, late counts): a tick that stepped no
        slot cost nothing and says nothing about how long a session's step takes."""
        return self.stepped_slots > 0


TickListener = Callable[[TickStats], None]


@dataclass(frozen=True, slots=True)
class TickOutput:
    """One tick's frames for the slots opened without a frame callback, handed over once per tick."""

    stats: TickStats
    frames: Sequence[tuple[int, EngineFrame]]
    """(the `tag` its slot was opened with, frame), for the slots still open when the tick ended: a tag
    names one session's tenancy of a slot, which a slot number alone does not once the slot is reused."""


OutputListener = Callable[[TickOutput], None]


@dataclass(frozen=True, slots=True)
class RunnerStats:
    ticks: int
    """Ticks that count (`TickStats.counts`)."""
    late_ticks: int
    errors: int
    recent_durations_s: tuple[float, ...]
    p50_s: float
    p99_s: float
    slots_used: int
    slots_total: int
    period_s: float
