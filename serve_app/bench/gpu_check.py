"""The GPU check: the full-size engine on one accelerator, measured in one bounded run.

Builds Moshi 7B (moshi's `_lm_kwargs`) and Mimi (its `_mimi_config`) with random weights directly on the
device — no download, no weights file — and measures, with the project's own `BatchedEngine` and the
single-stream reference loop:

- tick p50/p99 for B = 1, 2, 4, ... and on until memory runs out (or --max-batch), with CUDA graphs
  (moshi's `CUDAGraphed`, which LMGen and Mimi enable on CUDA), and eager at B = 1 and 16 for the ratio;
  the largest B whose p99 stays under the 80 ms frame is the sessions-per-GPU figure;
- memory per slot: the streaming state actually allocated, and on CUDA the growth of
  `torch.cuda.max_memory_allocated` with B, against `engine/sizing.py`'s estimate, and what `slots: auto`
  would choose here and on a 24 GB card;
- parity: batched slots joining, leaving and pausing against the single-stream loop, greedy: the fraction
  of identical tokens (re-run in float32 when bf16 is not bit-identical);
- slot rebuild time for 60 s and 240 s of history (serve_app/bench/rebuild_bench.py's measurement);
- with the LM's linears in int8 (and fp8 where the GPU has it): tick times, sessions, memory.

Every section runs under one overall time budget (--budget-s, default 480 s) and what is done is written
after each one, so the run always ends with JSON (gpu_check.json) and a Markdown table (gpu_check.md).
`--tiny` runs the same program on CPU with the tiny checkpoint (tests/engine/test_gpu_check.py);
`--full-size --layers 2 --device cpu` is the full-width dry run. docs/BENCHMARKS.md ("GPU check") says how
to run it on a GPU host that has torch but neither moshi nor Ray. Imports nothing of Ray or the server.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import logging
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import sentencepiece
import torch
from moshi.models import loaders
from moshi.utils.compile import no_cuda_graph
from torch import nn

from serve_app.bench.engine_bench import git_commit, machine_info
from serve_app.bench.neighbours import streaming_neighbours
from serve_app.bench.rebuild_bench import measure as measure_rebuild
from serve_app.bench.rebuild_bench import synthetic_window
from serve_app.constants import FRAME_MS, FRAME_SAMPLES
from serve_app.engine.batch import BatchedEngine
from serve_app.engine.loader import LoadedModel, load_model, resolve_device, resolve_dtype
from serve_app.engine.quantize import QuantizeMode, WeightOnlyLinear, module_bytes, quantize_lm
from serve_app.engine.single import SingleStream
from serve_app.engine.sizing import (
    DEFAULT_BUDGET_FRACTION,
    SlotsDoNotFit,
    check_replica_fits,
    free_accelerator_bytes,
    kv_cache_bytes_per_slot,
    slots_for_memory,
)
from serve_app.engine.spec import ModelSpec, SamplingParams
from serve_app.engine.state_bytes import streaming_state_bytes
from serve_app.engine.tiny import randomise_codebooks, train_tokenizer

logger = logging.getLogger("gpu_check")

GREEDY = SamplingParams(use_sampling=False)
SAMPLED = SamplingParams()
CARD_24GB = 23_028 * 2**20
"""An A10G / L4 as nvidia-smi reports it (22.5 GiB)."""
_GIB = 2**30
_UNTIMED_TICKS = 3
"""A session's first steps emit placeholder rows and skip the decode: not timed."""


# --- bounded time -------------------------------------------------------------------------------------------


class Deadline:
    """The run's time budget: sections ask before starting, loops before each iteration."""

    def __init__(self, seconds: float) -> None:
        self.started = time.perf_counter()
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)

    def allows(self, needed_s: float = 0.0) -> bool:
        return self.left() > needed_s


class OutOfTime(Exception):
    """The budget ran out inside a section: keep what it measured so far."""


# --- building the model -------------------------------------------------------------------------------------


def build_full_size(device: torch.device, dtype: torch.dtype, layers: int | None, seed: int) -> LoadedModel:
    """Moshi 7B (or its real widths with `layers` temporal layers) and Mimi, random weights, built on the
    device itself: moshi passes the device to every layer, and Mimi is built inside a device context."""
    torch.manual_seed(seed)
    lm_kwargs = dict(loaders._lm_kwargs)
    if layers is not None:
        lm_kwargs["num_layers"] = layers
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_kwargs, device=device, dtype=dtype)
    lm.eval()
    with torch.device(device):
        mimi = loaders.get_mimi(None, None, device=device)
    randomise_codebooks(mimi, torch.Generator().manual_seed(seed))
    tokenizer = sentencepiece.SentencePieceProcessor(model_proto=train_tokenizer(seed))
    return LoadedModel(
        mimi=mimi,
        lm=lm,
        tokenizer=tokenizer,
        lm_gen_config={},
        device=device,
        dtype=dtype,
        source="moshi 7B config, random weights" + (f", {layers} layers" if layers else ""),
        config=lm_kwargs,
    )


def build_model(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    if args.tiny:
        return load_model(ModelSpec(tiny_seed=args.seed, device=str(device), dtype=args.dtype))
    return build_full_size(device, dtype, args.layers, args.seed)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _graphs(enabled: bool) -> AbstractContextManager[None]:
    """CUDA graphs as moshi enables them on CUDA (on by default), or eager."""
    return nullcontext() if enabled else no_cuda_graph()


# --- memory -------------------------------------------------------------------------------------------------


# --- tick timing --------------------------------------------------------------------------------------------


def _percentiles(seconds: Sequence[float]) -> dict[str, float]:
    p50, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 99])
    return {"p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2), "ticks": len(seconds)}


def time_ticks(
    model: LoadedModel, batch: int, ticks: int, *, graphs: bool, deadline: Deadline
) -> dict[str, Any]:
    """Every slot active, ticked back to back: tick percentiles, and the memory the engine allocated."""
    device = model.device
    rng = np.random.default_rng(batch)
    pool = (rng.standard_normal((8, FRAME_SAMPLES)) * 0.1).astype(np.float32)
    row: dict[str, Any] = {"batch": batch, "cuda_graphs": graphs and device.type == "cuda"}
    _free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    try:
        with _graphs(graphs), BatchedEngine(model, slots=batch, sampling=SAMPLED) as engine:
            state = streaming_state_bytes(model.lm, model.mimi)
            engine.warmup()
            slots = [engine.open_slot() for _ in range(batch)]
            durations: list[float] = []
            for tick in range(ticks + _UNTIMED_TICKS):
                if not deadline.allows():
                    break
                for slot in slots:
                    engine.push(slot, pool[(tick + slot) % len(pool)])
                started = time.perf_counter()
                engine.tick()  # returns host arrays: already synchronised
                if tick >= _UNTIMED_TICKS:
                    durations.append(time.perf_counter() - started)
            row["state_bytes"] = state
            if device.type == "cuda":
                row["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(device) - before)
    except torch.OutOfMemoryError:
        logger.warning("B=%d does not fit in memory", batch)
        row["out_of_memory"] = True
        return row
    finally:
        _free(device)
    if durations:
        row.update(_percentiles(durations))
    return row


def sweep(
    model: LoadedModel,
    batches: Sequence[int],
    max_batch: int,
    ticks: int,
    deadline: Deadline,
    period_ms: float,
) -> list[dict[str, Any]]:
    """The listed sizes, then doubling on past them until memory runs out, max_batch, or a p99 past twice
    the frame (larger batches are only slower)."""
    rows: list[dict[str, Any]] = []
    queue = sorted({b for b in batches if b <= max_batch})
    while queue and deadline.allows(5):
        batch = queue.pop(0)
        row = time_ticks(model, batch, ticks, graphs=True, deadline=deadline)
        rows.append(row)
        print(f"B={batch:4d}: {_row_text(row)}", flush=True)
        # Past twice the frame, larger batches are only slower; two sizes are kept to measure per-slot growth.
        if row.get("out_of_memory") or (len(rows) >= 2 and row.get("p99_ms", 0) > 2 * period_ms):
            break
        if not queue and 2 * batch <= max_batch:
            queue.append(2 * batch)
    return rows


def _row_text(row: dict[str, Any]) -> str:
    if row.get("out_of_memory"):
        return "out of memory"
    if "p50_ms" not in row:
        return "not measured (time budget)"
    return f"tick p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms"


def sessions_within(rows: Sequence[dict[str, Any]], period_ms: float) -> int:
    """Largest measured B whose p99 tick stays under the frame (0 if none)."""
    return max((r["batch"] for r in rows if r.get("p99_ms", float("inf")) < period_ms), default=0)


def per_slot_measured(rows: Sequence[dict[str, Any]], key: str) -> int | None:
    """Growth of `key` per added slot between the smallest and largest measured batch."""
    measured = [r for r in rows if key in r and not r.get("out_of_memory")]
    if len(measured) < 2:
        return None
    low, high = measured[0], measured[-1]
    return round((int(high[key]) - int(low[key])) / (int(high["batch"]) - int(low["batch"])))


def memory_report(model: LoadedModel, rows: Sequence[dict[str, Any]], period_ms: float) -> dict[str, Any]:
    """Measured memory per slot against sizing's estimate, and what `slots: auto` would choose."""
    estimate = kv_cache_bytes_per_slot(model)
    free = free_accelerator_bytes(model.device)
    by_memory = slots_for_memory(model, "auto", 1024, free)
    budget_ms = DEFAULT_BUDGET_FRACTION * period_ms
    by_tick = max((r["batch"] for r in rows if r.get("p50_ms", float("inf")) <= budget_ms), default=1)
    try:
        card_24gb = check_replica_fits(model, 1, CARD_24GB).slots_that_fit
    except SlotsDoNotFit:
        card_24gb = 0
    state = per_slot_measured(rows, "state_bytes")
    return {
        "weight_bytes": module_bytes(model.lm) + module_bytes(model.mimi),
        "estimate_bytes_per_slot": estimate,
        "state_bytes_per_slot": state,
        "state_vs_estimate": round(state / estimate, 4) if state else None,
        "cuda_peak_bytes_per_slot": per_slot_measured(rows, "cuda_peak_bytes"),
        "free_bytes_after_load": free,
        "auto_slots_by_memory": by_memory if free is not None else None,
        "auto_slots_by_tick": by_tick,
        "auto_slots": min(by_memory, by_tick) if free is not None else by_tick,
        "slots_on_24gb_card": card_24gb,
    }


def eager_ratio(
    model: LoadedModel,
    batches: Sequence[int],
    ticks: int,
    graphed: Sequence[dict[str, Any]],
    deadline: Deadline,
) -> list[dict[str, Any]]:
    """Eager tick time at the given sizes, and its ratio to the graphed time measured in the sweep."""
    rows = []
    by_batch = {r["batch"]: r for r in graphed}
    for batch in batches:
        if not deadline.allows(5) or batch not in by_batch or "p50_ms" not in by_batch[batch]:
            continue
        row = time_ticks(model, batch, ticks, graphs=False, deadline=deadline)
        if "p50_ms" in row:
            row["graphed_p50_ms"] = by_batch[batch]["p50_ms"]
            # Off CUDA both runs are eager: a ratio would only measure noise.
            graphed_p50 = by_batch[batch]["p50_ms"]
            cuda = model.device.type == "cuda"
            row["eager_over_graphed"] = round(row["p50_ms"] / graphed_p50, 2) if cuda else None
        rows.append(row)
        print(f"eager B={batch:4d}: {_row_text(row)}", flush=True)
    return rows


# --- parity -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ParitySession:
    """A scripted session: opens at a tick, pushes its frames in parts (gaps are pauses), may close."""

    name: str
    audio: npt.NDArray[np.float32]
    opens_at: int
    pushes: dict[int, tuple[int, int]]
    """tick -> frame range pushed before that tick."""
    closes_at: int | None = None
    slot: int | None = None
    tokens: list[npt.NDArray[np.int64]] = dataclasses.field(default_factory=list)


def parity_sessions(steps: int) -> list[ParitySession]:
    """Four sessions over ≥ `steps` ticks: one throughout, one joining late and pausing, one leaving early,
    one reusing the freed slot."""
    rng = np.random.default_rng(0)

    def audio(frames: int) -> npt.NDArray[np.float32]:
        return (rng.standard_normal(frames * FRAME_SAMPLES) * 0.1).astype(np.float32)

    late, short = max(4, steps * 3 // 5), max(4, steps * 3 // 10)
    return [
        ParitySession("throughout", audio(steps), 0, {0: (0, steps)}),
        ParitySession(
            "joins at 10, pauses 10 ticks",
            audio(late),
            10,
            {10: (0, late // 2), 20 + late // 2: (late // 2, late)},
        ),
        ParitySession("leaves early", audio(short), 0, {0: (0, short)}, closes_at=short - 2),
        ParitySession("reuses the freed slot", audio(short), short, {short: (0, short)}),
    ]


def run_parity(model: LoadedModel, steps: int, deadline: Deadline) -> dict[str, Any]:
    """Batched (4 slots) against the single-stream loop, greedy; tokens compared step by step."""
    sessions = parity_sessions(steps)
    reference: dict[str, list[npt.NDArray[np.int64]]] = {}
    with SingleStream(model, GREEDY) as stream:
        for session in sessions:
            stream.reset()
            outputs = []
            for frame in session.audio.reshape(-1, FRAME_SAMPLES):
                if not deadline.allows():
                    raise OutOfTime("parity: single-stream reference")
                out = stream.step(frame)
                if out is not None:
                    outputs.append(out[0])
            reference[session.name] = outputs
    total_ticks = max(max(s.pushes) + s.audio.size // FRAME_SAMPLES for s in sessions) + 2
    with BatchedEngine(model, slots=4, sampling=GREEDY) as engine:
        engine.warmup()
        for tick in range(total_ticks):
            if not deadline.allows():
                raise OutOfTime("parity: batched engine")
            for session in sessions:
                if session.closes_at == tick and session.slot is not None:
                    engine.close_slot(session.slot)
                if session.opens_at == tick:
                    session.slot = engine.open_slot()
                if tick in session.pushes and session.slot is not None:
                    start, end = session.pushes[tick]
                    engine.push(session.slot, session.audio[start * FRAME_SAMPLES : end * FRAME_SAMPLES])
            engine.tick()
            for session in sessions:
                live = session.slot is not None and (session.closes_at is None or tick < session.closes_at)
                if live and session.slot in engine.last_tokens:
                    session.tokens.append(engine.last_tokens[session.slot])
    compared = identical = steps_compared = steps_identical = 0
    per_session = {}
    for session in sessions:
        expected = reference[session.name]
        pairs = list(zip(session.tokens, expected, strict=False))
        first_divergence = next((i for i, (a, b) in enumerate(pairs) if not np.array_equal(a, b)), None)
        for got, want in pairs:
            compared += got.size
            identical += int((got == want).sum())
            steps_compared += 1
            steps_identical += int(np.array_equal(got, want))
        per_session[session.name] = {"steps": len(pairs), "first_divergent_step": first_divergence}
    return {
        "dtype": str(model.dtype).removeprefix("torch."),
        "steps": steps_compared,
        "identical_token_fraction": round(identical / compared, 5) if compared else None,
        "identical_step_fraction": round(steps_identical / steps_compared, 5) if steps_compared else None,
        "sessions": per_session,
    }


# --- rebuild ------------------------------------------------------------------------------------------------


def run_rebuilds(model: LoadedModel, windows_s: Sequence[float], deadline: Deadline) -> list[dict[str, Any]]:
    """rebuild_bench's measurement: one slot rebuilt while a neighbour streams in real time."""
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    beside = streaming_neighbours(model, neighbours=1, frames=3000, sampling=SAMPLED, rng=rng, settle_s=0)
    with beside as (engine, runner, ticks):
        for seconds in windows_s:
            if not deadline.allows(10):
                break
            row = measure_rebuild(runner, engine, ticks, synthetic_window(model, seconds, rng))
            rows.append(row)
            print(
                f"rebuild {row['window_s']:.0f} s of history: {row['wall_ms']:.0f} ms "
                f"({row['compute_ms']:.0f} ms compute, {row['chunks']} chunks)",
                flush=True,
            )
    return rows


# --- quantized ----------------------------------------------------------------------------------------------


def dequantize_lm(lm: nn.Module) -> None:
    """Back to plain linears (from the 8-bit values), so the next mode starts from full-precision weights."""
    for module in list(lm.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, WeightOnlyLinear):
                plain = nn.Linear(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    device=child.qweight.device,
                    dtype=child.compute_dtype,
                )
                with torch.no_grad():
                    plain.weight.copy_(child.weight)
                    if child.bias is not None:
                        plain.bias.copy_(child.bias)
                setattr(module, name, plain)


def quantize_modes(requested: Sequence[str], device: torch.device) -> list[QuantizeMode]:
    modes: list[QuantizeMode] = []
    for mode in requested:
        if mode == "fp8" and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
            logger.info("fp8 skipped: compute capability below 8.9")
            continue
        if mode in ("int8", "fp8"):
            modes.append(mode)  # type: ignore[arg-type]  # checked just above
    return modes


def run_quantized(
    model: LoadedModel,
    modes: Sequence[QuantizeMode],
    batches: Sequence[int],
    max_batch: int,
    ticks: int,
    deadline: Deadline,
    period_ms: float,
) -> list[dict[str, Any]]:
    results = []
    for mode in modes:
        if not deadline.allows(20):
            break
        report = quantize_lm(model.lm, mode)
        rows = sweep(model, batches, max_batch, ticks, deadline, period_ms)
        results.append(
            {
                "mode": mode,
                "kernel": report.kernel,
                "linears": report.linears,
                "lm_bytes_before": report.bytes_before,
                "lm_bytes_after": report.bytes_after,
                "batched": rows,
                "sessions_within_frame": sessions_within(rows, period_ms),
                "memory": memory_report(model, rows, period_ms),
            }
        )
        dequantize_lm(model.lm)
        _free(model.device)
    return results


# --- the run ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serve_app.bench.gpu_check", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_out"), help="output directory")
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoint on CPU (the test's mode)")
    parser.add_argument(
        "--full-size", action="store_true", help="moshi 7B widths (the default without --tiny)"
    )
    parser.add_argument("--layers", type=int, default=None, help="temporal layers (real widths): a dry run")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--max-batch", type=int, default=256, help="stop doubling past the list here")
    parser.add_argument("--eager-batches", type=int, nargs="*", default=[1, 16])
    parser.add_argument("--ticks", type=int, default=40, help="timed ticks per batch size")
    parser.add_argument("--parity-steps", type=int, default=200, help="0 skips the parity check")
    parser.add_argument("--history-s", type=float, nargs="*", default=[60, 240], help="rebuild windows")
    parser.add_argument("--quantize", nargs="*", default=["int8", "fp8"], choices=("int8", "fp8"))
    parser.add_argument("--quantized-batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--budget-s", type=float, default=480.0, help="the whole run ends within this")
    parser.add_argument("--period-ms", type=float, default=float(FRAME_MS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cpu" if args.tiny else "cuda"
    if args.tiny and (args.layers is not None or args.full_size):
        parser.error("--layers and --full-size are for the full-size model, not --tiny")
    return args


Section = Callable[[], Any]


def _sections(
    args: argparse.Namespace, model: LoadedModel, result: dict[str, Any], deadline: Deadline
) -> Iterator[tuple[str, Section]]:
    """(result key, what computes it), in the order they run; later ones may read earlier results."""
    period = args.period_ms
    yield "batched", lambda: sweep(model, args.batch_sizes, args.max_batch, args.ticks, deadline, period)
    yield "sessions_within_frame", lambda: sessions_within(result.get("batched") or [], period)
    yield "memory", lambda: memory_report(model, result.get("batched") or [], period)
    yield (
        "eager",
        lambda: eager_ratio(model, args.eager_batches, args.ticks, result.get("batched") or [], deadline),
    )
    if args.parity_steps > 0:
        yield "parity", lambda: run_parity(model, args.parity_steps, deadline)
        yield "parity_float32", lambda: _parity_float32(args, model, result, deadline)
    yield "rebuild", lambda: run_rebuilds(model, args.history_s, deadline)
    modes = quantize_modes(args.quantize, model.device)
    yield (
        "quantized",
        lambda: run_quantized(
            model, modes, args.quantized_batch_sizes, args.max_batch, args.ticks, deadline, period
        ),
    )


def _parity_float32(
    args: argparse.Namespace, model: LoadedModel, result: dict[str, Any], deadline: Deadline
) -> dict[str, Any] | None:
    """Where the model's own dtype was not bit-identical, whether float32 is (None when not needed)."""
    parity = result.get("parity")
    if not isinstance(parity, dict) or parity.get("identical_token_fraction") in (None, 1.0):
        return None
    if model.dtype == torch.float32:
        return {"note": "already float32"}
    # bf16 -> float32 -> bf16 is exact, so the model is left as it was (Mimi is float32 already).
    model.lm.float()
    try:
        return run_parity(dataclasses.replace(model, dtype=torch.float32), args.parity_steps, deadline)
    finally:
        model.lm.to(model.dtype)
        _free(model.device)


def run(args: argparse.Namespace, command: str, write: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    deadline = Deadline(args.budget_s)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    result: dict[str, Any] = {
        "command": command,
        "commit": git_commit(),
        "machine": machine_info(device),
        "budget_s": args.budget_s,
        "period_ms": args.period_ms,
        "not_built": "Kyutai STT 1B and PersonaPlex: no full-size config in serve_app/engine yet",
    }
    started = time.perf_counter()
    model = build_model(args, device, dtype)
    _sync(device)
    result["model"] = {
        "kind": f"tiny seed {args.seed}" if args.tiny else model.source,
        "device": str(device),
        "lm_dtype": str(dtype).removeprefix("torch."),
        "lm_params": sum(p.numel() for p in model.lm.parameters()),
        "mimi_params": sum(p.numel() for p in model.mimi.parameters()),
        "build_s": round(time.perf_counter() - started, 1),
    }
    print(f"built {result['model']['kind']} on {device} in {result['model']['build_s']} s", flush=True)
    write(result)
    skipped: list[str] = []
    errors: dict[str, str] = {}
    result.update(skipped_for_time=skipped, errors=errors)
    for key, section in _sections(args, model, result, deadline):
        if not deadline.allows(2):
            skipped.append(key)
            result[key] = None
            continue
        try:
            result[key] = section()
        except OutOfTime as exc:
            skipped.append(key)
            result[key] = None
            logger.warning("out of time in %s", exc)
        except Exception as exc:  # one failing section must not lose the others' numbers
            logger.exception("%s failed", key)
            errors[key] = f"{type(exc).__name__}: {exc}"
            result[key] = None
        result["seconds"] = round(time.perf_counter() - deadline.started, 1)
        write(result)
    result["seconds"] = round(time.perf_counter() - deadline.started, 1)
    return result


FIELDS = (
    "command",
    "commit",
    "machine",
    "model",
    "budget_s",
    "period_ms",
    "batched",
    "sessions_within_frame",
    "memory",
    "eager",
    "parity",
    "parity_float32",
    "rebuild",
    "quantized",
    "skipped_for_time",
    "errors",
    "seconds",
    "not_built",
)
"""Every key a run writes (test_gpu_check checks the --tiny run writes them all)."""


def _gib(value: int | None) -> str:
    return "—" if value is None else f"{value / _GIB:.3f} GiB"


def markdown(result: dict[str, Any]) -> str:
    """The tables for docs/BENCHMARKS.md."""
    machine, model = result.get("machine", {}), result.get("model", {})
    where = machine.get("gpu") or f"{machine.get('nproc')}-core CPU ({machine.get('cpu_model')})"
    lines = [
        f"GPU check on {where}, torch {machine.get('torch')}, commit `{result.get('commit')}`: "
        f"{model.get('kind')}, LM {model.get('lm_dtype')} "
        f"({model.get('lm_params', 0) / 1e9:.2f} B parameters), built in {model.get('build_s')} s; "
        f"run {result.get('seconds')} s of a {result.get('budget_s')} s budget.",
        "",
        f"`{result.get('command')}`",
        "",
        "| B | tick p50 (ms) | tick p99 (ms) | CUDA graphs | streaming state | CUDA peak over load |",
        "|---|---|---|---|---|---|",
    ]
    for row in (result.get("batched") or []) + (result.get("eager") or []):
        if row.get("out_of_memory"):
            lines.append(f"| {row['batch']} | out of memory | | | | |")
            continue
        lines.append(
            f"| {row['batch']} | {row.get('p50_ms', '—')} | {row.get('p99_ms', '—')} | "
            f"{'yes' if row.get('cuda_graphs') else 'no'} | {_gib(row.get('state_bytes'))} | "
            f"{_gib(row.get('cuda_peak_bytes'))} |"
        )
    eager = [r for r in result.get("eager") or [] if r.get("eager_over_graphed") is not None]
    if eager:
        ratios = ", ".join(f"B={r['batch']}: {r['eager_over_graphed']}x" for r in eager)
        lines += ["", f"Eager over CUDA-graphed tick (p50): {ratios}."]
    lines += [
        "",
        f"Sessions per device (largest B with p99 < {result.get('period_ms')} ms): "
        f"**{result.get('sessions_within_frame')}**.",
    ]
    memory = result.get("memory")
    if memory:
        lines += [
            "",
            "| memory | value |",
            "|---|---|",
            f"| weights (LM + Mimi) | {_gib(memory['weight_bytes'])} |",
            f"| per slot, sizing.py estimate | {_gib(memory['estimate_bytes_per_slot'])} |",
            f"| per slot, streaming state measured | {_gib(memory['state_bytes_per_slot'])} "
            f"(x{memory['state_vs_estimate']}) |",
            f"| per slot, CUDA peak growth | {_gib(memory['cuda_peak_bytes_per_slot'])} |",
            f"| `slots: auto` here (memory / tick bound) | {memory['auto_slots']} "
            f"({memory['auto_slots_by_memory']} / {memory['auto_slots_by_tick']}) |",
            f"| slots on a 24 GB card, these weights | {memory['slots_on_24gb_card']} |",
        ]
    for key, label in (("parity", "Parity"), ("parity_float32", "Parity in float32")):
        parity = result.get(key)
        if parity and "identical_token_fraction" in parity:
            lines += [
                "",
                f"{label} ({parity['dtype']}, {parity['steps']} steps over 4 sessions joining, pausing, "
                f"leaving and reusing a slot, greedy): identical tokens "
                f"{parity['identical_token_fraction']}, "
                f"identical steps {parity['identical_step_fraction']}; first divergent step per session "
                f"{ {k: v['first_divergent_step'] for k, v in parity['sessions'].items()} }.",
            ]
    rebuilds = result.get("rebuild") or []
    if rebuilds:
        lines += [
            "",
            "| history | rebuild wall | compute | chunks | neighbour late ticks |",
            "|---|---|---|---|---|",
        ]
        for row in rebuilds:
            lines.append(
                f"| {row['window_s']} s | {row['wall_ms']} ms | {row['compute_ms']} ms | {row['chunks']} | "
                f"{row['neighbour_late_ticks']}/{row['neighbour_ticks']} |"
            )
    for entry in result.get("quantized") or []:
        ticks = ", ".join(
            f"B={r['batch']} {r['p50_ms']}/{r['p99_ms']} ms" for r in entry["batched"] if "p50_ms" in r
        )
        lines += [
            "",
            f"Quantized {entry['mode']} ({entry['kernel']}, {entry['linears']} linears): LM "
            f"{_gib(entry['lm_bytes_before'])} -> {_gib(entry['lm_bytes_after'])}; tick p50/p99 {ticks}; "
            f"sessions within the frame {entry['sessions_within_frame']}; `slots: auto` "
            f"{entry['memory']['auto_slots']}; slots on a 24 GB card "
            f"{entry['memory']['slots_on_24gb_card']}.",
        ]
    if result.get("skipped_for_time") or result.get("errors"):
        lines += ["", f"Skipped for time: {result.get('skipped_for_time')}; errors: {result.get('errors')}."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(arguments)
    args.out.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def write(result: dict[str, Any]) -> None:
        with lock:
            complete = {key: copy.deepcopy(result.get(key)) for key in FIELDS}
            (args.out / "gpu_check.json").write_text(json.dumps(complete, indent=2, default=str))
            (args.out / "gpu_check.md").write_text(markdown(complete))

    result = run(args, shlex.join(["python", "-m", "serve_app.bench.gpu_check", *arguments]), write)
    write(result)
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    return 1 if result.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
