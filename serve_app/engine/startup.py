"""Load, size, warm up and start one model's clocked runner: what a replica (or a test server) does first.

Loading and warm-up run on a thread of their own at a lower CPU priority (`STARTUP_NICENESS`): a replica
starting beside live ones on the same node (an upscale, a replacement after a crash) then takes only the CPU
their engine clocks leave, instead of pushing their sessions past the lag limit. Sizing (`slots: auto`
times ticks) runs at the caller's priority, as the clock will. The clock thread is started from the
caller's thread, so it keeps the caller's priority (Linux threads inherit niceness when created, and an
unprivileged thread cannot lower its own niceness again)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Literal, TypeVar

from serve_app.engine.batch import BatchedEngine
from serve_app.engine.capacity import DEFAULT_ADMIT_FRACTION, TickBudget
from serve_app.engine.loader import CheckpointError, load_model
from serve_app.engine.runner import DEFAULT_MAX_LAG_S, ClockedRunner, TickStats
from serve_app.engine.sizing import resolve_slots
from serve_app.engine.spec import ModelSpec, SamplingParams
from serve_app.heap import freeze_heap

logger = logging.getLogger(__name__)

STARTUP_NICENESS = 10
"""Added to the caller's niceness for loading and warm-up: at +10 a busy thread gets about a tenth of a
core that a nice-0 thread wants (Linux CFS weights 110 vs 1024)."""

T = TypeVar("T")


def at_lower_priority(work: Callable[[], T], niceness: int = STARTUP_NICENESS) -> T:
    """`work()` on a new thread `niceness` steps below the caller; returns its result or raises its error."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + niceness)
            outcome.append(work())
        except BaseException as exc:  # handed to the caller, which raises it
            failure.append(exc)

    thread = threading.Thread(target=run, name="engine-startup", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def start_runner(
    spec: ModelSpec,
    *,
    slots: int | Literal["auto"],
    max_slots: int,
    sampling: SamplingParams,
    model_id: str = "",
    on_tick: Callable[[TickStats], None] | None = None,
    max_lag_s: float | None = DEFAULT_MAX_LAG_S,
    admit_fraction: float | None = DEFAULT_ADMIT_FRACTION,
    cpu_share: float | None = None,
    text_only: bool = False,
) -> ClockedRunner:
    """Blocking: seconds on CPU, minutes for the 7B model on a GPU. Raises CheckpointError for a bad
    checkpoint (or one of the wrong kind: `text_only` asks for a streaming recogniser such as Kyutai STT,
    otherwise a Moshi that speaks) and SlotsDoNotFit when a fixed `slots` cannot fit the accelerator's
    memory."""

    model = at_lower_priority(lambda: load_model(spec))
    if model.text_only != text_only:
        wanted = "a text-only STT checkpoint (dep_q 0)" if text_only else "a Moshi checkpoint that speaks"
        raise CheckpointError(
            f"{model.source}: {model_id or 'this model'} needs {wanted}, but its config.json has "
            f"model_type={model.model_type!r}, dep_q={model.lm.dep_q}"
        )
    # At the caller's priority: `slots: auto` times ticks, and must time them as the clock will run them.
    count = resolve_slots(model, slots, max_slots, sampling, model_id=model_id or None, cpu_share=cpu_share)

    def build() -> BatchedEngine:
        engine = BatchedEngine(model, slots=count, sampling=sampling)
        engine.warmup()
        return engine

    engine = at_lower_priority(build)
    runner = ClockedRunner(
        engine,
        on_tick=on_tick,
        max_lag_s=max_lag_s,
        budget=TickBudget(count, admit_fraction=admit_fraction),
    )
    runner.start()
    freeze_heap()
    logger.info("model ready", extra={"model": model_id, "slots": count})
    return runner
