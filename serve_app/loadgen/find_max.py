"""`--find-max`: runs of growing N until the criteria fail, then bisection: the largest N that held.

`MaxSearch` is the sans-I/O search (which N next, given what held); `find_max` drives it with real runs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from serve_app.loadgen.audio import append_events
from serve_app.loadgen.criteria import Criteria, failures
from serve_app.loadgen.progress import Progress
from serve_app.loadgen.runner import LoadConfig, LoadRun, run_load, with_sessions


@dataclass
class MaxSearch:
    """Doubling from `start` (or `+step` when set) until a run fails, then (doubling only) bisection
    between the largest N that held and the smallest that failed. `limit` caps N."""

    start: int = 1
    step: int | None = None
    limit: int = 1024
    best: int = 0
    """Largest N that held so far (0: none)."""
    failed: int | None = None
    """Smallest N that failed so far."""
    tried: dict[int, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.start < 1 or self.limit < self.start or (self.step is not None and self.step < 1):
            raise ValueError("need 1 <= start <= limit and step >= 1")

    def first(self) -> int:
        return self.start

    def record(self, n: int, held: bool) -> int | None:
        """Note the outcome of N; the next N to run, or None when the search is over."""
        self.tried[n] = held
        if held:
            self.best = max(self.best, n)
        else:
            self.failed = n if self.failed is None else min(self.failed, n)
        if self.failed is None:
            if n >= self.limit:
                return None
            return min(self.limit, n + self.step if self.step is not None else 2 * n)
        if self.step is not None:
            return None
        low, high = self.best, self.failed
        if high - low <= 1:
            return None
        middle = (low + high) // 2
        return middle if middle not in self.tried else None


@dataclass
class Step:
    sessions: int
    run: LoadRun
    failures: list[str]

    @property
    def held(self) -> bool:
        return not self.failures


async def find_max(
    config: LoadConfig,
    criteria: Criteria,
    search: MaxSearch,
    progress: Progress | None = None,
    settle_s: float = 3.0,
) -> list[Step]:
    """Every run of the search, in order; `settle_s` between runs lets the server free the last slots."""
    progress = progress or Progress(enabled=False)
    events = append_events(config.audio)
    steps: list[Step] = []
    n: int | None = search.first()
    while n is not None:
        run = await run_load(with_sessions(config, n), progress, events)
        step = Step(n, run, failures(run.aggregate, criteria))
        steps.append(step)
        verdict = (
            "held"
            if step.held
            else ("refused: " if run.aggregate.refused else "failed: ") + "; ".join(step.failures)
        )
        progress.note(f"N={n}: {verdict}")
        n = search.record(n, step.held)
        if n is not None:
            await asyncio.sleep(settle_s)
    return steps


def largest_held(steps: list[Step]) -> Step | None:
    held = [s for s in steps if s.held]
    return max(held, key=lambda s: s.sessions) if held else None
