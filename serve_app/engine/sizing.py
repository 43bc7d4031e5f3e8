"""How many slots one replica can hold: accelerator memory for each slot's streaming state, and the tick time.

A slot's memory is its rows of moshi's streaming state, allocated when `BatchedEngine` enters `streaming(B)`:
the LM's KV caches dominate (docs/ENGINE_FACTS.md, "Memory per slot"). `kv_cache_bytes_per_slot` computes it
from the loaded modules, the same way moshi sizes the buffers; `slots_for_memory` checks a fixed count (or
picks one for "auto") against the memory free after loading, before any cache is allocated. For "auto",
`slots_for_tick_time` then finds the largest batch whose measured tick fits a share of the 80 ms frame.
"""

from __future__ import annotations

import gc
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from moshi.modules.conv import StreamingConv1d, StreamingConvTranspose1d
from moshi.modules.transformer import StreamingMultiheadAttention
from torch import nn

from serve_app.constants import FRAME_MS, FRAME_S, FRAME_SAMPLES
from serve_app.engine.batch import BatchedEngine
from serve_app.engine.loader import LoadedModel
from serve_app.engine.quantize import WeightOnlyLinear, module_bytes, quantize_mode
from serve_app.engine.spec import SamplingParams

logger = logging.getLogger(__name__)

DEFAULT_RESERVE_FRACTION = 0.1
"""Share of the free memory kept out of the slot budget: activations, CUDA-graph pools, allocator slack."""
DEFAULT_BUDGET_FRACTION = 0.6
"""Share of the 80 ms frame a full tick may take; the rest is headroom for contention and the transport."""
_UNTIMED_TICKS = 2
"""A session's first steps emit placeholder rows and skip the decode (LMGen's max_delay is 1): not timed."""
_GIB = 2**30


@dataclass(frozen=True)
class SlotBytes:
    """One slot's share of the streaming state, in bytes, by owner."""

    lm_kv: int
    """Temporal transformer: layers x 2 (k, v) x kv heads x head dim x context x dtype bytes."""
    depformer_kv: int
    """Depth transformer: a fresh `streaming(B)` inside every step (kept in the CUDA-graph pool on GPU)."""
    mimi_kv: int
    """Mimi's encoder and decoder transformers (context 250)."""
    mimi_conv: int
    """Mimi's streaming conv / transposed-conv buffers."""
    lm_gen_tokens: int
    """LMGen's delayed-token ring: codebooks x (max delay + 2) int64."""

    @property
    def total(self) -> int:
        return self.lm_kv + self.depformer_kv + self.mimi_kv + self.mimi_conv + self.lm_gen_tokens


def _attention_cache_bytes(attention: StreamingMultiheadAttention) -> int:
    """Bytes per batch row of the `RingKVCache` moshi allocates for this attention (0 for cross attention)."""
    if attention.cross_attention:
        return 0
    if attention.context is not None:
        capacity = int(attention.context)
    elif attention.weights_per_step:
        capacity = int(attention.weights_per_step)
    else:
        return 0  # moshi refuses to stream such a module; nothing is allocated
    in_proj = attention.in_projs[0]
    lora_a = getattr(in_proj, "lora_A", None)
    if isinstance(lora_a, nn.Linear):
        dtype = lora_a.weight.dtype
    elif isinstance(in_proj, WeightOnlyLinear):
        dtype = in_proj.compute_dtype  # 8-bit weights, cache in the compute dtype (moshi reads `.weight`)
    elif isinstance(in_proj, nn.Linear):
        dtype = in_proj.weight.dtype
    else:
        dtype = torch.float16  # quantized linear: moshi keeps the cache in fp16
    kv_heads = attention.num_heads // attention.kv_repeat
    head_dim = attention.embed_dim // attention.num_heads
    item = torch.empty((), dtype=dtype, device="meta").element_size()
    return 2 * kv_heads * head_dim * capacity * item


def _attention_bytes(module: nn.Module | None) -> int:
    if module is None:
        return 0
    return sum(
        _attention_cache_bytes(m) for m in module.modules() if isinstance(m, StreamingMultiheadAttention)
    )


def _conv_bytes(module: nn.Module) -> int:
    total = 0
    for m in module.modules():
        if isinstance(m, StreamingConv1d):
            item = next(m.parameters()).element_size()
            total += m.conv.conv.in_channels * (m._effective_kernel_size - m._stride) * item
        elif isinstance(m, StreamingConvTranspose1d):
            item = next(m.parameters()).element_size()
            total += m.convtr.convtr.out_channels * (m._kernel_size - m._stride) * item
    return total


def slot_state_bytes(model: LoadedModel) -> SlotBytes:
    """Each owner's share of one slot's streaming state (works on meta-device models too)."""
    lm = model.lm
    depformer = lm.depformer
    temporal = _attention_bytes(lm) - _attention_bytes(depformer)
    return SlotBytes(
        lm_kv=temporal,
        depformer_kv=_attention_bytes(depformer),
        mimi_kv=_attention_bytes(model.mimi),
        mimi_conv=_conv_bytes(model.mimi),
        lm_gen_tokens=int(lm.num_codebooks) * (max(lm.delays) + 2) * 8,
    )


def kv_cache_bytes_per_slot(model: LoadedModel) -> int:
    """Accelerator bytes one slot's streaming state takes: the KV caches plus Mimi's small conv buffers.

    Moshi 7B bf16 (32 layers, dim 4096, context 3000): 1,572,864,000 B of LM cache; 1,589,541,808 B (1.48 GiB)
    in all with the default fp32 Mimi. Excludes per-step activations (covered by the reserve) and CFG,
    which would double the LM rows (the engine does not use it).
    """
    return slot_state_bytes(model).total


class SlotsDoNotFit(Exception):
    """The requested slots (or, for "auto", a single slot) do not fit in the accelerator's free memory."""

    def __init__(
        self,
        *,
        model_id: str | None,
        requested: int | Literal["auto"],
        bytes_per_slot: int,
        free_bytes: int,
        reserve_fraction: float,
        weights: str = "",
    ) -> None:
        self.model_id = model_id
        self.requested = requested
        self.bytes_per_slot = bytes_per_slot
        self.free_bytes = free_bytes
        self.usable_bytes = int(free_bytes * (1 - reserve_fraction))
        who = f"model {model_id!r}" if model_id else "model"
        usable = (
            f"{free_bytes} B ({free_bytes / _GIB:.2f} GiB) are free after loading, of which "
            f"{self.usable_bytes} B ({self.usable_bytes / _GIB:.2f} GiB) may hold slots "
            f"({reserve_fraction:.0%} kept for activations)"
        )
        per_slot = f"{bytes_per_slot} B ({bytes_per_slot / _GIB:.2f} GiB) per slot"
        if requested == "auto":
            message = (
                f"{who}: slots: auto, but not even one slot fits: {per_slot}, and {usable}. "
                "Use a GPU with more memory (or one not shared with another replica)."
            )
            message += weights
        else:
            needed = requested * bytes_per_slot
            message = (
                f"{who}: slots: {requested} needs {needed} B ({needed / _GIB:.2f} GiB), {per_slot}, "
                f"but {usable}. "
                f"Lower `slots` (at most {self.usable_bytes // bytes_per_slot} fit here), use `slots: auto`, "
                "or use a GPU with more memory."
            )
            message += weights
        super().__init__(message)


def weights_note(model: LoadedModel) -> str:
    """One sentence on what the weights take, and the spec option that would shrink them."""
    lm_bytes = module_bytes(model.lm)
    mode = quantize_mode(model.lm)
    stored = f"quantize: {mode}" if mode != "none" else str(model.dtype).removeprefix("torch.")
    text = f" The LM's weights take {lm_bytes / _GIB:.2f} GiB ({stored})"
    if mode == "none" and model.dtype != torch.float32:
        text += "; `quantize: int8` in the model's spec halves them"
    return text + "."


CUDA_CONTEXT_BYTES = 512 * 2**20
"""What the CUDA context and cuBLAS workspaces take before any tensor (about 0.5 GiB on an L40S / H100)."""


@dataclass(frozen=True)
class ReplicaMemory:
    """What one replica needs on its accelerator: context, weights, and every slot's streaming state."""

    device_bytes: int
    context_bytes: int
    weight_bytes: int
    """LM and Mimi parameters and buffers, as loaded (8-bit LM linears counted at 1 byte)."""
    bytes_per_slot: int
    slots: int
    reserve_fraction: float

    @property
    def free_after_load(self) -> int:
        return self.device_bytes - self.context_bytes - self.weight_bytes

    @property
    def slots_that_fit(self) -> int:
        return max(0, math.floor(self.free_after_load * (1 - self.reserve_fraction)) // self.bytes_per_slot)

    @property
    def total(self) -> int:
        return self.context_bytes + self.weight_bytes + self.slots * self.bytes_per_slot


def check_replica_fits(
    model: LoadedModel,
    slots: int,
    device_bytes: int,
    *,
    reserve_fraction: float = DEFAULT_RESERVE_FRACTION,
    context_bytes: int = CUDA_CONTEXT_BYTES,
    model_id: str | None = None,
) -> ReplicaMemory:
    """Whether `slots` slots of `model` fit a card of `device_bytes`, before holding one: the same
    arithmetic `slots_for_memory` runs after loading, with the free memory predicted from the weights.

    Works on a meta-device model (built and quantized without memory), so a profile can be checked
    against a card it is not running on. Raises SlotsDoNotFit naming the numbers.
    """
    plan = ReplicaMemory(
        device_bytes=device_bytes,
        context_bytes=context_bytes,
        weight_bytes=module_bytes(model.lm) + module_bytes(model.mimi),
        bytes_per_slot=kv_cache_bytes_per_slot(model),
        slots=slots,
        reserve_fraction=reserve_fraction,
    )
    if plan.free_after_load <= 0 or plan.slots_that_fit < slots:
        raise SlotsDoNotFit(
            model_id=model_id,
            requested=slots,
            bytes_per_slot=plan.bytes_per_slot,
            free_bytes=max(0, plan.free_after_load),
            reserve_fraction=reserve_fraction,
            weights=f"{weights_note(model)} On a {device_bytes / _GIB:.1f} GiB card, with "
            f"{context_bytes / _GIB:.1f} GiB for the CUDA context.",
        )
    return plan


def free_accelerator_bytes(device: torch.device) -> int | None:
    """Memory this process can still allocate on `device`; None where memory does not bound slots (CPU).

    Free device memory plus what torch's caching allocator holds but does not use.
    """
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free) + int(cached)


def slots_for_memory(
    model: LoadedModel,
    requested: int | Literal["auto"],
    max_slots: int,
    free_bytes: int | None,
    reserve_fraction: float = DEFAULT_RESERVE_FRACTION,
    *,
    model_id: str | None = None,
) -> int:
    """Slots the free memory allows: `requested` if it fits, else SlotsDoNotFit; for "auto" as many as fit.

    Call after loading and before building the engine, so nothing is allocated for a count that cannot work.
    `free_bytes` None (CPU) means memory does not bound it: `requested`, or `max_slots` for "auto".
    """
    if max_slots < 1:
        raise ValueError(f"max_slots must be >= 1, got {max_slots}")
    if not 0 <= reserve_fraction < 1:
        raise ValueError(f"reserve_fraction must be in [0, 1), got {reserve_fraction}")
    if requested != "auto" and requested < 1:
        raise ValueError(f"slots must be >= 1, got {requested}")
    if free_bytes is None:
        return max_slots if requested == "auto" else requested
    per_slot = kv_cache_bytes_per_slot(model)
    fitting = math.floor(free_bytes * (1 - reserve_fraction)) // per_slot
    problem = SlotsDoNotFit(
        model_id=model_id,
        requested=requested,
        bytes_per_slot=per_slot,
        free_bytes=free_bytes,
        reserve_fraction=reserve_fraction,
        weights=weights_note(model),
    )
    if requested == "auto":
        if fitting < 1:
            raise problem
        return min(max_slots, fitting)
    if requested > fitting:
        raise problem
    return requested


def slots_for_tick_time(measure: Callable[[int], float], max_slots: int, budget_s: float) -> int:
    """Largest B <= max_slots whose tick (`measure(B)`, seconds) fits `budget_s`; at least 1.

    Doubles from 1 until a size does not fit (or max_slots is reached), then bisects the gap, assuming the
    tick time grows with B: about 2 log2(B) measurements.
    """
    if max_slots < 1:
        raise ValueError(f"max_slots must be >= 1, got {max_slots}")
    measured: dict[int, float] = {}

    def fits(batch: int) -> bool:
        if batch not in measured:
            measured[batch] = measure(batch)
            logger.debug("tick at %d slots: %.1f ms", batch, measured[batch] * 1000)
        return measured[batch] <= budget_s

    if not fits(1):
        # Not an error: measured at start-up, when every replica on the node loads and warms up at once
        # on the same cores; admission then judges the ticks the replica actually runs (engine/capacity.py).
        logger.info(
            "slots: auto sized to 1: one slot measured %.1f ms per tick at start-up (the other replicas "
            "warming up beside it), over this replica's %.1f ms share of the frame; admissions follow the "
            "ticks measured from now on",
            measured[1] * 1000,
            budget_s * 1000,
        )
        return 1
    low, high = 1, None  # low fits; high (when known) does not
    while high is None and low < max_slots:
        candidate = min(2 * low, max_slots)
        if fits(candidate):
            low = candidate
        else:
            high = candidate
    if high is None:
        return low
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def measure_tick_s(model: LoadedModel, slots: int, sampling: SamplingParams, ticks: int = 8) -> float:
    """Median seconds of a full tick of a warmed-up `slots`-slot engine with every slot stepping."""
    if ticks < 1:
        raise ValueError(f"ticks must be >= 1, got {ticks}")
    rng = np.random.default_rng(slots)
    pool = (rng.standard_normal((4, FRAME_SAMPLES)) * 0.1).astype(np.float32)
    durations: list[float] = []
    try:
        with BatchedEngine(model, slots=slots, sampling=sampling) as engine:
            engine.warmup()
            opened = [engine.open_slot() for _ in range(slots)]
            for tick in range(_UNTIMED_TICKS + ticks):
                for slot in opened:
                    engine.push(slot, pool[(tick + slot) % len(pool)])
                started = time.perf_counter()
                engine.tick()  # returns host arrays: already synchronised
                if tick >= _UNTIMED_TICKS:
                    durations.append(time.perf_counter() - started)
    finally:
        gc.collect()
        if model.device.type == "cuda":
            torch.cuda.empty_cache()
    return statistics.median(durations)


def tick_budget_s(budget_fraction: float, device: torch.device, cpu_share: float | None = None) -> float:
    """Seconds a full tick may take for "auto" sizing: `budget_fraction` of the 80 ms frame, and on a CPU
    only the replica's share of a core of it (Ray's `num_cpus`, ≤ 1): replicas given half a core each
    step their engines side by side on the same cores, so each may use only its half of the time."""
    if not 0 < budget_fraction <= 1:
        raise ValueError(f"budget_fraction must be in (0, 1], got {budget_fraction}")
    budget = budget_fraction * FRAME_S
    if device.type == "cpu" and cpu_share is not None and cpu_share > 0:
        budget *= min(1.0, cpu_share)
    return budget


def resolve_slots(
    model: LoadedModel,
    requested: int | Literal["auto"],
    max_slots: int,
    sampling: SamplingParams,
    budget_fraction: float = DEFAULT_BUDGET_FRACTION,
    *,
    model_id: str | None = None,
    reserve_fraction: float = DEFAULT_RESERVE_FRACTION,
    cpu_share: float | None = None,
) -> int:
    """The slot count to build the engine with: memory bound first, then for "auto" the tick-time bound.

    A fixed count is only checked against memory (SlotsDoNotFit if it cannot fit). "auto" takes the largest
    count that fits in memory (at most `max_slots`) and whose full tick stays within `tick_budget_s`.
    Call once after loading, before building the replica's engine.
    """
    budget_s = tick_budget_s(budget_fraction, model.device, cpu_share)
    who = model_id or model.source or "model"
    free = free_accelerator_bytes(model.device)
    per_slot = kv_cache_bytes_per_slot(model)
    by_memory = slots_for_memory(
        model, requested, max_slots, free, reserve_fraction, model_id=model_id or model.source or None
    )
    free_text = "unbounded (no accelerator)" if free is None else f"{free / _GIB:.2f} GiB free"
    if requested != "auto":
        logger.info(
            "%s: %d slots as configured; %.3f GiB of streaming state per slot, %s",
            who,
            by_memory,
            per_slot / _GIB,
            free_text,
        )
        return by_memory

    def measure(batch: int) -> float:
        try:
            return measure_tick_s(model, batch, sampling)
        except torch.OutOfMemoryError:
            logger.warning("%s: %d slots ran out of memory while measuring the tick", who, batch)
            return math.inf

    by_tick = slots_for_tick_time(measure, by_memory, budget_s)
    logger.info(
        "%s: slots auto -> %d (memory allows %d: %.3f GiB per slot, %s, %.0f%% reserve, max_slots %d; "
        "tick-time bound %d at a %.1f ms budget = %.0f%% of %d ms, CPU share %s)",
        who,
        by_tick,
        by_memory,
        per_slot / _GIB,
        free_text,
        reserve_fraction * 100,
        max_slots,
        by_tick,
        budget_s * 1000,
        budget_fraction * 100,
        FRAME_MS,
        "all" if cpu_share is None else cpu_share,
    )
    return by_tick
