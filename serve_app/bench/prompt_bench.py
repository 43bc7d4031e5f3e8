"""Prompt prefill benchmark: a ~150-frame persona prompt, one pass vs frame by frame, cache hit vs miss.

1. Isolated (a batch-of-one LMGen): the prompt stepped frame by frame as the reference does (with its
   depformer, and with the depformer skipped), against the one-pass prefill (a few causal chunks).
2. Live: on a running `ClockedRunner` with `--neighbours` sessions streaming in real time, a slot's
   admission (from `start_prompt` until its row holds the prompt) on a cache miss, a cache hit, and frame
   by frame in the engine; and the neighbours' worst input lag and late ticks meanwhile.

Run: `python -m serve_app.bench.prompt_bench [--out bench_out]` (tiny PersonaPlex, CPU), or
`python -m serve_app.bench.prompt_bench --device cuda --full-size` (Moshi 7B geometry, random weights, no
voice: the prompt is silence and role tokens). A program that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from moshi.models.lm import LMGen

from serve_app.bench.engine_bench import full_size_model, git_commit, machine_info, model_info, run_and_save
from serve_app.bench.neighbours import streaming_neighbours
from serve_app.engine.batch import BatchedEngine
from serve_app.engine.loader import LoadedModel, load_model, resolve_device, resolve_dtype
from serve_app.engine.personaplex import pick_voice
from serve_app.engine.prompt import PromptPlan, PromptPrefill, persona_frames, plan_prompt, step_framewise
from serve_app.engine.rebuild import LM_CHUNK_STEPS
from serve_app.engine.runner import ClockedRunner
from serve_app.engine.spec import ModelSpec, SamplingParams
from serve_app.engine.tick_stats import TickStats

logger = logging.getLogger("prompt_bench")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serve_app.bench.prompt_bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_out"), help="output directory")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    parser.add_argument("--full-size", action="store_true", help="Moshi 7B geometry, random weights")
    parser.add_argument("--seed", type=int, default=0, help="tiny checkpoint seed")
    parser.add_argument("--frames", type=int, default=150, help="prompt length in frames")
    parser.add_argument("--neighbours", type=int, default=1, help="sessions streaming beside the prompt")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measure (the best is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a CPU replica's: 1)")
    return parser.parse_args(argv)


def bench_plan(model: LoadedModel, frames: int, key: str) -> PromptPlan:
    """A persona prompt of `frames` frames: the model's first voice (if any), then role tokens."""
    lm = model.lm
    voice = pick_voice(model.voices, None) if model.voices else None
    role = frames - 12 - (voice.frames if voice is not None else 0)
    ids = [4 + i % (int(lm.text_card) - 4) for i in range(max(0, role))]
    return plan_prompt(lm, persona_frames(voice, ids, pad=int(lm.text_padding_token_id)), ("bench", key))


def _sync(model: LoadedModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def isolated(model: LoadedModel, plan: PromptPlan, repeats: int) -> dict[str, float]:
    """Best-of-`repeats` ms of each way, on a batch-of-one LMGen."""
    lm_gen = LMGen(model.lm, use_sampling=False, support_out_of_sync=True)

    def one_pass() -> None:
        job = PromptPrefill(model.lm, lm_gen, 0, plan)
        while not job.step():
            pass

    ways: dict[str, Callable[[], None]] = {
        "framewise_with_depformer_ms": lambda: step_framewise(lm_gen, plan, run_depformer=True),
        "framewise_ms": lambda: step_framewise(lm_gen, plan),
        "one_pass_ms": one_pass,
    }
    best: dict[str, float] = {}
    with torch.no_grad(), lm_gen.streaming(1):
        for name, way in ways.items():
            times = []
            for index in range(repeats + 1):  # the first run is warm-up
                _sync(model)
                started = time.perf_counter()
                way()
                _sync(model)
                if index:
                    times.append(1000 * (time.perf_counter() - started))
            best[name] = round(min(times), 2)
    return best


def admission(
    runner: ClockedRunner, engine: BatchedEngine, ticks: list[TickStats], plan: PromptPlan, *, framewise: bool
) -> dict[str, Any]:
    """Open a slot, start its prompt, wait until the row holds it; the neighbours' lag meanwhile (and, for
    comparison, over the half second before)."""
    time.sleep(1.0)  # whatever came before is caught up
    slot = runner.open_slot(lambda frame: None)
    worst = [0.0]
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            lags = [lag for s, lag in engine.lateness().items() if s != slot]
            worst[0] = max([worst[0], *lags])
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(0.5)
    lag_before, worst[0] = worst[0], 0.0
    before = len(ticks)
    started = time.perf_counter()
    job = engine.start_prompt(slot, plan, framewise=framewise)
    while not job.done:
        time.sleep(0.0005)
    wall = time.perf_counter() - started
    watching.set()
    watcher.join()
    window = ticks[before:]
    runner.close_slot(slot)
    return {
        "way": "framewise" if framewise else ("cache hit" if job.cache_hit else "cache miss"),
        "wall_ms": round(1000 * wall, 2),
        "compute_ms": round(1000 * job.compute_s, 2),
        "chunks": job.chunks,
        "longest_chunk_ms": round(1000 * job.longest_chunk_s, 2),
        "neighbour_ticks": len(window),
        "neighbour_late_ticks": sum(t.late for t in window),
        "neighbour_worst_lag_ms": round(1000 * worst[0], 1),
        "neighbour_lag_before_ms": round(1000 * lag_before, 1),
    }


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.set_num_threads(args.threads)
    if args.full_size:
        model = full_size_model(device, dtype, args.seed)
    else:
        spec = ModelSpec(tiny_seed=args.seed, tiny_kind="personaplex", device=str(device), dtype=args.dtype)
        model = load_model(spec)
    plan = bench_plan(model, args.frames, "isolated")
    result: dict[str, Any] = {"prompt_frames": plan.steps, "voice_rows": plan.embedded}
    result["isolated"] = isolated(model, plan, args.repeats)
    print(f"prompt of {plan.steps} frames, isolated: {result['isolated']}", flush=True)
    rng = np.random.default_rng(args.seed)
    rows: list[dict[str, Any]] = []
    beside = streaming_neighbours(
        model, neighbours=args.neighbours, frames=3_000, sampling=SamplingParams(), rng=rng
    )
    with beside as (engine, runner, ticks):
        for repeat in range(args.repeats):
            live = bench_plan(model, args.frames, f"live-{repeat}")
            for framewise in (False, False, True):  # a miss, then a hit of the same key; then stepwise
                row = admission(runner, engine, ticks, live, framewise=framewise)
                rows.append(row)
                print(
                    f"{row['way']:>10}: admitted in {row['wall_ms']:7.1f} ms ({row['compute_ms']:.1f} ms "
                    f"compute, {row['chunks']} chunks, longest {row['longest_chunk_ms']:.1f} ms); "
                    f"neighbours: {row['neighbour_late_ticks']}/{row['neighbour_ticks']} late ticks, "
                    f"worst lag {row['neighbour_worst_lag_ms']:.0f} ms "
                    f"(before: {row['neighbour_lag_before_ms']:.0f} ms)",
                    flush=True,
                )
    return {
        "command": command,
        "commit": git_commit(),
        "machine": machine_info(device),
        "model": model_info(model, args, device, dtype),
        "neighbours": args.neighbours,
        "lm_chunk_steps": LM_CHUNK_STEPS,
        "prompt_cache": engine.prompt_cache.stats(),
        **result,
        "live": rows,
    }


def main(argv: Sequence[str] | None = None) -> None:
    run_and_save("prompt_bench", argv, parse_args, run)


if __name__ == "__main__":
    main()
