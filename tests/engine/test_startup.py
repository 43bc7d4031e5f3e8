"""Startup: loading and warm-up yield the CPU to live engine clocks on the node; the clock itself does not."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from serve_app.engine import startup
from serve_app.engine.batch import BatchedEngine
from serve_app.engine.loader import LoadedModel
from serve_app.engine.spec import ModelSpec, SamplingParams

GREEDY = SamplingParams(use_sampling=False)


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_work_runs_below_the_callers_priority_and_the_caller_stays_where_it_was() -> None:
    before = _niceness()
    assert startup.at_lower_priority(_niceness, niceness=3) == min(before + 3, 19)
    assert _niceness() == before


def test_an_error_in_the_work_reaches_the_caller() -> None:
    def fail() -> None:
        raise ValueError("bad checkpoint")

    with pytest.raises(ValueError, match="bad checkpoint"):
        startup.at_lower_priority(fail)


def test_a_runner_loads_and_warms_up_niced_and_ticks_at_the_callers_priority(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, int] = {}
    load, warmup = startup.load_model, BatchedEngine.warmup

    def spying_load(spec: ModelSpec) -> LoadedModel:
        seen["load"] = _niceness()
        return load(spec)

    def spying_warmup(engine: BatchedEngine) -> None:
        seen["warmup"] = _niceness()
        warmup(engine)

    monkeypatch.setattr(startup, "load_model", spying_load)
    monkeypatch.setattr(BatchedEngine, "warmup", spying_warmup)
    caller = _niceness()
    runner = startup.start_runner(
        ModelSpec(local_dir=tiny_dir, device="cpu"), slots=1, max_slots=1, sampling=GREEDY
    )
    try:
        niced = min(caller + startup.STARTUP_NICENESS, 19)
        assert seen == {"load": niced, "warmup": niced}
        assert runner.native_thread_id is not None
        assert os.getpriority(os.PRIO_PROCESS, runner.native_thread_id) == caller
    finally:
        runner.stop()
