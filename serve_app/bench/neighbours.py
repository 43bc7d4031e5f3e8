"""What the prompt, rebuild and GPU benchmarks measure beside: an engine whose other slots stream noise in
real time, on a clocked runner (no lag limit: a benchmark measures the lag, it does not end sessions) that
records every tick."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import numpy as np

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.batch import BatchedEngine
from serve_app.engine.loader import LoadedModel
from serve_app.engine.runner import ClockedRunner
from serve_app.engine.spec import SamplingParams
from serve_app.engine.tick_stats import TickStats


@contextlib.contextmanager
def streaming_neighbours(
    model: LoadedModel,
    *,
    neighbours: int,
    frames: int,
    sampling: SamplingParams,
    rng: np.random.Generator,
    settle_s: float = 1.0,
) -> Iterator[tuple[BatchedEngine, ClockedRunner, list[TickStats]]]:
    """(engine, runner, ticks) with `neighbours + 1` slots, `neighbours` of them fed `frames` 80 ms frames of
    noise due 80 ms apart; the free slot is the measured one. `settle_s` lets the ticks settle first."""
    with BatchedEngine(model, slots=neighbours + 1, sampling=sampling) as engine:
        engine.warmup()
        runner = ClockedRunner(engine, max_lag_s=None)
        ticks: list[TickStats] = []
        runner.add_tick_listener(ticks.append)
        runner.start()
        try:
            for _ in range(neighbours):
                slot = runner.open_slot(lambda frame: None)
                runner.push(slot, (rng.standard_normal(FRAME_SAMPLES * frames) * 0.1).astype(np.float32))
            time.sleep(settle_s)
            yield engine, runner, ticks
        finally:
            runner.stop()
