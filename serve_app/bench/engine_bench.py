"""Engine benchmark: batched tick time vs batch size, and real-time sessions per design (batched vs lock).

Run: `python -m serve_app.bench.engine_bench [--out bench_out] [--device cuda --full-size]`. Writes
engine_bench.json and engine_bench.png. A program that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece
import torch
from moshi.models import loaders

from serve_app.constants import FRAME_MS, FRAME_SAMPLES
from serve_app.engine.batch import BatchedEngine
from serve_app.engine.loader import LoadedModel, load_model, resolve_device, resolve_dtype
from serve_app.engine.single import SingleStream
from serve_app.engine.spec import ModelSpec, SamplingParams
from serve_app.engine.tiny import randomise_codebooks, train_tokenizer

logger = logging.getLogger("engine_bench")

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class Timing:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    samples: int

    @staticmethod
    def of(seconds: Sequence[float]) -> Timing:
        p50, p90, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 90, 99])
        return Timing(round(float(p50), 2), round(float(p90), 2), round(float(p99), 2), len(seconds))


@dataclass
class BatchRow:
    batch: int
    tick: Timing | None
    """None when the batch did not fit (out of memory)."""
    realtime: bool


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serve_app.bench.engine_bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_out"), help="output directory")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    parser.add_argument(
        "--full-size",
        action="store_true",
        help="full Moshi 7B architecture (moshi's default _lm_kwargs, random bf16 weights) and default Mimi",
    )
    parser.add_argument("--seed", type=int, default=0, help="tiny checkpoint seed")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCH_SIZES))
    parser.add_argument("--ticks", type=int, default=40, help="timed ticks per batch size")
    parser.add_argument("--single-steps", type=int, default=60, help="timed batch-1 steps (lock design)")
    parser.add_argument("--no-refine", action="store_true", help="skip the search between measured sizes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--period-ms", type=float, default=float(FRAME_MS))
    args = parser.parse_args(argv)
    if any(b < 1 for b in args.batch_sizes):
        parser.error("batch sizes must be >= 1")
    args.batch_sizes = sorted(set(args.batch_sizes))
    return args


def full_size_model(device: torch.device, dtype: torch.dtype, seed: int) -> LoadedModel:
    """Moshi 7B geometry with random weights + default Mimi with random codebooks: for timing only."""
    torch.manual_seed(seed)
    lm = loaders.get_moshi_lm(None, lm_kwargs=None, device=device, dtype=dtype)
    lm.eval()
    mimi = loaders.get_mimi(None, None, device=device)
    randomise_codebooks(mimi, torch.Generator().manual_seed(seed))
    tokenizer = sentencepiece.SentencePieceProcessor(model_proto=train_tokenizer(seed))
    return LoadedModel(mimi=mimi, lm=lm, tokenizer=tokenizer, lm_gen_config={}, device=device, dtype=dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def time_single_stream(model: LoadedModel, steps: int, sampling: SamplingParams) -> Timing:
    """Lock-per-model design: one session at a time, each frame one batch-1 encode/step/decode."""
    rng = np.random.default_rng(0)
    frames = (rng.standard_normal((steps + 5, FRAME_SAMPLES)) * 0.1).astype(np.float32)
    durations = []
    with SingleStream(model, sampling) as stream:
        for index, frame in enumerate(frames):
            _sync(model.device)
            started = time.perf_counter()
            stream.step(frame)  # returns host arrays: already synchronised
            if index >= 5:  # past the first step and CUDA-graph capture
                durations.append(time.perf_counter() - started)
    return Timing.of(durations)


def time_batched(model: LoadedModel, batch: int, ticks: int, sampling: SamplingParams) -> Timing | None:
    """Every slot active: one frame per slot per tick, ticked back to back. None if it does not fit."""
    rng = np.random.default_rng(batch)
    pool = (rng.standard_normal((8, FRAME_SAMPLES)) * 0.1).astype(np.float32)
    try:
        with BatchedEngine(model, slots=batch, sampling=sampling) as engine:
            engine.warmup()
            slots = [engine.open_slot() for _ in range(batch)]
            durations = []
            for tick in range(ticks + 3):
                for slot in slots:
                    engine.push(slot, pool[(tick + slot) % len(pool)])
                started = time.perf_counter()
                engine.tick()  # returns host arrays: already synchronised
                if tick >= 3:  # past the sessions' first steps
                    durations.append(time.perf_counter() - started)
        return Timing.of(durations)
    except torch.OutOfMemoryError:
        logger.warning("batch %d does not fit in memory", batch)
        return None
    finally:
        _free(model.device)


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu_model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        ram_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except OSError:
        ram_gib = float("nan")
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gib": round(ram_gib, 1),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def model_info(
    model: LoadedModel, args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """The model a benchmark ran (its `--full-size` or `--seed`), as every engine benchmark reports it."""
    return {
        "kind": "full-size (random weights)" if args.full_size else f"tiny seed {args.seed}",
        "lm_params": sum(p.numel() for p in model.lm.parameters()),
        "mimi_params": sum(p.numel() for p in model.mimi.parameters()),
        "device": str(device),
        "lm_dtype": str(dtype).removeprefix("torch."),
    }


def run_and_save(
    name: str,
    argv: Sequence[str] | None,
    parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
    run: Callable[[argparse.Namespace, str], dict[str, Any]],
) -> None:
    """A benchmark program's `main`: run it with its own command line recorded, write `<out>/<name>.json`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    command = f"python -m serve_app.bench.{name} " + shlex.join(sys.argv[1:] if argv is None else argv)
    result = run(args, command)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=True)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def sustained(rows: Sequence[BatchRow]) -> int:
    """Largest measured batch whose median tick fits the period (0 if none)."""
    return max((row.batch for row in rows if row.realtime), default=0)


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    sampling = SamplingParams()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    started = time.perf_counter()
    if args.full_size:
        model = full_size_model(device, dtype, args.seed)
    else:
        model = load_model(ModelSpec(tiny_seed=args.seed, device=str(device), dtype=args.dtype))
    logger.info("model ready in %.1f s", time.perf_counter() - started)

    single = time_single_stream(model, args.single_steps, sampling)
    lock_sessions = math.floor(args.period_ms / single.p50_ms)
    print(f"lock-per-model: batch-1 step p50 {single.p50_ms:.1f} ms -> {lock_sessions} sessions", flush=True)

    rows: list[BatchRow] = []
    for batch in args.batch_sizes:
        timing = time_batched(model, batch, args.ticks, sampling)
        rows.append(BatchRow(batch, timing, timing is not None and timing.p50_ms <= args.period_ms))
        shown = f"{timing.p50_ms:.1f} ms (p99 {timing.p99_ms:.1f})" if timing else "out of memory"
        print(f"batched B={batch:3d}: tick p50 {shown}", flush=True)
        if timing is None or timing.p50_ms > 2 * args.period_ms:
            break  # larger batches only get slower (or do not fit)

    refined: list[BatchRow] = []
    best = sustained(rows)
    above = [row.batch for row in rows if row.batch > best]
    if not args.no_refine and best and above:
        low, high = best, above[0]
        while high - low > 1:  # bisect the measured gap: tick time grows monotonically with B
            middle = (low + high) // 2
            timing = time_batched(model, middle, max(10, args.ticks // 2), sampling)
            ok = timing is not None and timing.p50_ms <= args.period_ms
            refined.append(BatchRow(middle, timing, ok))
            print(f"refine B={middle:3d}: {'fits' if ok else 'too slow'}", flush=True)
            low, high = (middle, high) if ok else (low, middle)
        best = low
    ratio = round(best / lock_sessions, 2) if lock_sessions else None
    print(f"real-time sessions: batched {best} vs lock-per-model {lock_sessions} (ratio {ratio})", flush=True)
    return {
        "command": command,
        "commit": git_commit(),
        "machine": machine_info(device),
        "model": model_info(model, args, device, dtype),
        "sampling": sampling.model_dump(),
        "period_ms": args.period_ms,
        "lock_per_model": {"step": asdict(single), "sessions": lock_sessions},
        "batched": [asdict(row) for row in rows],
        "batched_refined": [asdict(row) for row in refined],
        "batched_sessions": best,
        "ratio": ratio,
        "seconds": round(time.perf_counter() - started, 1),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in result["batched"] + result["batched_refined"] if row["tick"]]
    rows.sort(key=lambda row: row["batch"])
    batches = [row["batch"] for row in rows]
    step = result["lock_per_model"]["step"]["p50_ms"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(
        batches,
        [row["tick"]["p50_ms"] for row in rows],
        "o-",
        label="batched engine: one tick for B sessions",
    )
    ax.plot(batches, [step * b for b in batches], "s--", label="lock per model: B serialised batch-1 steps")
    ax.axhline(
        result["period_ms"], color="red", linewidth=1, label=f"real time ({result['period_ms']:.0f} ms frame)"
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent sessions B")
    ax.set_ylabel("time per 80 ms frame, ms (p50)")
    model, machine = result["model"], result["machine"]
    where = machine.get("gpu") or f"{machine['nproc']}-core CPU, {machine['torch_threads']} torch threads"
    ax.set_title(
        f"{model['kind']} on {where}\nreal-time sessions: batched {result['batched_sessions']} "
        f"vs lock {result['lock_per_model']['sessions']} ({result['ratio']}x)",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(arguments)
    result = run(args, shlex.join(["python", "-m", "serve_app.bench.engine_bench", *arguments]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine_bench.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "engine_bench.png")
    print(f"wrote {args.out / 'engine_bench.json'} and {args.out / 'engine_bench.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
