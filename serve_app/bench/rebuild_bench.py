"""Slot rebuild benchmark: how long a resumed session waits for its slot, against the history it brings.

For each window length (1 s … 240 s of history, the LM's whole context), a slot is rebuilt on a running
`ClockedRunner` while `--neighbours` other sessions stream in real time on the same engine: the rebuild's
chunks go between their ticks, as on a replica. Reported per window: wall time from admission to the
rebuilt slot (what the moved session waits), the rebuild's own compute, its chunks, and whether the
neighbours stayed in real time meanwhile (their worst input lag, late ticks).

Run: `python -m serve_app.bench.rebuild_bench [--out bench_out]` (tiny checkpoint, CPU), or
`python -m serve_app.bench.rebuild_bench --device cuda --full-size` (Moshi 7B geometry, random weights).
A program that prints numbers, not a test. Writes rebuild_bench.json.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serve_app.bench.engine_bench import full_size_model, git_commit, machine_info, model_info, run_and_save
from serve_app.bench.neighbours import streaming_neighbours
from serve_app.constants import FRAME_SAMPLES, SAMPLE_RATE
from serve_app.engine.batch import BatchedEngine
from serve_app.engine.history import ResumeWindow
from serve_app.engine.loader import LoadedModel, load_model, resolve_device, resolve_dtype
from serve_app.engine.rebuild import LM_CHUNK_STEPS, SlotRebuild
from serve_app.engine.runner import ClockedRunner
from serve_app.engine.spec import ModelSpec, SamplingParams
from serve_app.engine.tick_stats import TickStats

logger = logging.getLogger("rebuild_bench")

DEFAULT_WINDOWS_S = (1, 5, 15, 30, 60, 120, 240)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serve_app.bench.rebuild_bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_out"), help="output directory")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    parser.add_argument("--full-size", action="store_true", help="Moshi 7B geometry, random weights")
    parser.add_argument("--seed", type=int, default=0, help="tiny checkpoint seed")
    parser.add_argument("--windows", type=float, nargs="+", default=list(DEFAULT_WINDOWS_S), help="seconds")
    parser.add_argument("--neighbours", type=int, default=1, help="sessions streaming beside the rebuild")
    parser.add_argument("--repeats", type=int, default=2, help="rebuilds per window (the best is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a CPU replica's: 1)")
    return parser.parse_args(argv)


def synthetic_window(model: LoadedModel, seconds: float, rng: np.random.Generator) -> ResumeWindow:
    """A window of the given length with valid random tokens (rebuild time depends on shapes only)."""
    lm = model.lm
    steps = max(1, round(seconds * SAMPLE_RATE / FRAME_SAMPLES))
    kept = min(steps, 3000)
    records = np.empty((kept, lm.num_codebooks), np.int32)
    records[:, 0] = rng.integers(0, lm.text_card, kept)
    records[:, 1:] = rng.integers(0, lm.card, (kept, lm.num_codebooks - 1))
    frames = min(steps, 125)
    audio = (rng.standard_normal(frames * FRAME_SAMPLES) * 0.1).astype(np.float32)
    return ResumeWindow(steps, records, audio, np.zeros(0, np.float32), 0.0)


def measure(
    runner: ClockedRunner, engine: BatchedEngine, ticks: list[TickStats], window: ResumeWindow
) -> dict[str, Any]:
    done = threading.Event()
    jobs: list[SlotRebuild] = []

    def rebuilt(job: SlotRebuild) -> None:
        jobs.append(job)
        done.set()

    baseline = 0.0
    quiet_until = time.perf_counter() + 0.5
    while time.perf_counter() < quiet_until:  # the neighbours' lag with nothing being rebuilt
        baseline = max(baseline, *engine.lateness().values(), 0.0)
        time.sleep(0.01)
    first_tick = len(ticks)
    started = time.perf_counter()
    slot = runner.open_slot(lambda frame: None, resume=window, on_rebuilt=rebuilt)
    worst_lag = 0.0
    while not done.wait(0.01):
        worst_lag = max(worst_lag, *engine.lateness().values(), 0.0)
        if time.perf_counter() - started > 600:
            raise TimeoutError("the rebuild did not finish in 10 minutes")
    wall = time.perf_counter() - started
    runner.close_slot(slot)
    (job,) = jobs
    during = [t for t in ticks[first_tick:] if t.counts]
    return {
        "window_s": round(window.seconds, 2),
        "lm_steps": job.lm_steps,
        "wall_ms": round(1000 * wall, 1),
        "compute_ms": round(1000 * job.compute_s, 1),
        "chunks": job.chunks,
        "longest_chunk_ms": round(1000 * job.longest_chunk_s, 1),
        "neighbour_ticks": len(during),
        "neighbour_late_ticks": sum(t.late for t in during),
        "neighbour_worst_lag_ms": round(1000 * worst_lag, 1),
        "neighbour_lag_before_ms": round(1000 * baseline, 1),
    }


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.set_num_threads(args.threads)
    if args.full_size:
        model = full_size_model(device, dtype, args.seed)
    else:
        model = load_model(ModelSpec(tiny_seed=args.seed, device=str(device), dtype=args.dtype))
    rng = np.random.default_rng(args.seed)
    rows = []
    beside = streaming_neighbours(
        model, neighbours=args.neighbours, frames=12_000, sampling=SamplingParams(), rng=rng
    )
    with beside as (engine, runner, ticks):
        measure(runner, engine, ticks, synthetic_window(model, 2.0, rng))  # first-call costs out of the way
        for seconds in args.windows:
            best = min(
                (
                    measure(runner, engine, ticks, synthetic_window(model, seconds, rng))
                    for _ in range(args.repeats)
                ),
                key=lambda row: row["wall_ms"],
            )
            rows.append(best)
            print(
                f"{best['window_s']:6.1f} s of history: slot rebuilt in {best['wall_ms']:7.1f} ms "
                f"({best['compute_ms']:.1f} ms compute, {best['chunks']} chunks, longest "
                f"{best['longest_chunk_ms']:.1f} ms); neighbours: "
                f"{best['neighbour_late_ticks']}/{best['neighbour_ticks']} late ticks, worst lag "
                f"{best['neighbour_worst_lag_ms']:.0f} ms (before {best['neighbour_lag_before_ms']:.0f})",
                flush=True,
            )
    return {
        "command": command,
        "commit": git_commit(),
        "machine": machine_info(device),
        "model": model_info(model, args, device, dtype),
        "neighbours": args.neighbours,
        "lm_chunk_steps": LM_CHUNK_STEPS,
        "rows": rows,
    }


def main(argv: Sequence[str] | None = None) -> None:
    run_and_save("rebuild_bench", argv, parse_args, run)


if __name__ == "__main__":
    main()
