"""Slot sizing: the per-slot memory formula against moshi's real buffers, the memory and tick-time bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from moshi.models import loaders

from serve_app.config import ModelConfig
from serve_app.constants import FRAME_SAMPLES
from serve_app.engine import sizing
from serve_app.engine.batch import BatchedEngine
from serve_app.engine.loader import LoadedModel
from serve_app.engine.sizing import (
    SlotsDoNotFit,
    kv_cache_bytes_per_slot,
    measure_tick_s,
    resolve_slots,
    slot_state_bytes,
    slots_for_memory,
    slots_for_tick_time,
    tick_budget_s,
)
from serve_app.engine.spec import ModelSpec, SamplingParams
from serve_app.engine.state_bytes import streaming_state_bytes

# --- measuring what moshi allocates -------------------------------------------------------------------------


def _measured_bytes(model: LoadedModel, slots: int) -> int:
    """Streaming-state bytes of a `slots`-slot engine, plus the depformer's (it exists only inside a step)."""
    assert model.lm.depformer is not None
    depformer: list[int] = []
    hook = model.lm.depformer.register_forward_pre_hook(
        lambda module, _args: depformer.append(streaming_state_bytes(module))
    )
    try:
        with BatchedEngine(model, slots=slots, sampling=SamplingParams(use_sampling=False)) as engine:
            persistent = streaming_state_bytes(model.mimi, model.lm, engine._lm_gen)
            for slot in [engine.open_slot() for _ in range(slots)]:
                engine.push(slot, np.zeros(FRAME_SAMPLES, np.float32))
            engine.tick()
    finally:
        hook.remove()
    assert depformer, "the depformer did not run"
    return persistent + max(depformer)


def test_per_slot_formula_matches_the_streaming_state_moshi_allocates(tiny_model: LoadedModel) -> None:
    measured = (_measured_bytes(tiny_model, 5) - _measured_bytes(tiny_model, 1)) / 4
    predicted = kv_cache_bytes_per_slot(tiny_model)
    assert predicted == pytest.approx(measured, rel=0.01)  # exact but for per-row offsets and masks
    # The dominant term is the textbook one: layers x context x dim x 2 (k, v) x dtype bytes.
    cfg = tiny_model.config
    itemsize = torch.empty((), dtype=tiny_model.dtype).element_size()
    assert (
        slot_state_bytes(tiny_model).lm_kv == cfg["num_layers"] * cfg["context"] * cfg["dim"] * 2 * itemsize
    )


def test_moshi_7b_needs_about_1_5_gib_per_slot() -> None:
    with torch.device("meta"):
        lm = loaders.get_moshi_lm(None, lm_kwargs=None, device="meta", dtype=torch.bfloat16)
        mimi = loaders.get_mimi(None, None, device="meta")
    model = LoadedModel(
        mimi=mimi, lm=lm, tokenizer=None, lm_gen_config={}, device=torch.device("meta"), dtype=torch.bfloat16
    )
    parts = slot_state_bytes(model)
    assert parts.lm_kv == 32 * 3000 * 4096 * 2 * 2 == 1_572_864_000
    assert parts.depformer_kv == 6 * 8 * 1024 * 2 * 2
    assert parts.mimi_kv == 2 * 8 * 250 * 512 * 2 * 4  # encoder + decoder transformers, fp32
    assert parts.total == 1_589_541_808  # docs/ENGINE_FACTS.md
    assert parts.total / 2**30 == pytest.approx(1.48, abs=0.005)


# --- the memory bound ---------------------------------------------------------------------------------------


def test_fixed_slots_that_do_not_fit_raise_naming_the_numbers(tiny_model: LoadedModel) -> None:
    per_slot = kv_cache_bytes_per_slot(tiny_model)
    free = 3 * per_slot  # 90 % of it holds 2.7 slots
    assert slots_for_memory(tiny_model, 2, 64, free, model_id="moshi-sft") == 2
    with pytest.raises(SlotsDoNotFit) as caught:
        slots_for_memory(tiny_model, 3, 64, free, model_id="moshi-sft")
    message = str(caught.value)
    for fragment in ("'moshi-sft'", "slots: 3", f"{per_slot} B", f"{free} B", "at most 2", "slots: auto"):
        assert fragment in message
    assert (caught.value.requested, caught.value.bytes_per_slot, caught.value.free_bytes) == (
        3,
        per_slot,
        free,
    )


def test_auto_takes_what_fits_after_the_reserve_capped_at_max_slots(tiny_model: LoadedModel) -> None:
    per_slot = kv_cache_bytes_per_slot(tiny_model)
    free = 10 * per_slot + 123
    assert slots_for_memory(tiny_model, "auto", 64, free) == 9  # floor(0.9 x 10.00...) = 9
    assert slots_for_memory(tiny_model, "auto", 64, free, reserve_fraction=0.25) == 7
    assert slots_for_memory(tiny_model, "auto", 5, free) == 5
    with pytest.raises(SlotsDoNotFit, match="not even one slot fits"):
        slots_for_memory(tiny_model, "auto", 64, per_slot)  # 90 % of one slot


def test_memory_does_not_bound_slots_without_an_accelerator(tiny_model: LoadedModel) -> None:
    assert sizing.free_accelerator_bytes(torch.device("cpu")) is None
    assert slots_for_memory(tiny_model, 300, 64, None) == 300
    assert slots_for_memory(tiny_model, "auto", 64, None) == 64


def test_a_count_that_cannot_fit_fails_before_any_cache_is_allocated(
    tiny_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sizing, "free_accelerator_bytes", lambda device: kv_cache_bytes_per_slot(tiny_model))
    with pytest.raises(SlotsDoNotFit, match="'moshi-base'"):
        resolve_slots(tiny_model, 4, 64, SamplingParams(), model_id="moshi-base")
    assert tiny_model.lm._streaming_state is None and tiny_model.mimi._streaming_state is None


# --- the tick-time bound ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget_s", "max_slots", "expected"),
    [
        (0.0485, 64, 19),  # 0.01 + 0.002 x 19 = 0.048
        (0.0485, 8, 8),  # everything up to max_slots fits
        (0.0485, 19, 19),
        (0.0185, 64, 4),  # exactly a power of two
        (0.005, 64, 1),  # not even one slot fits: still 1
        (1.0, 1000, 495),  # 0.01 + 0.002 x 495 = 1.0
        (3.0, 1000, 1000),
    ],
)
def test_tick_time_bound_is_the_largest_batch_within_budget(
    budget_s: float, max_slots: int, expected: int
) -> None:
    calls: list[int] = []

    def measure(batch: int) -> float:
        calls.append(batch)
        return 0.01 + 0.002 * batch

    assert slots_for_tick_time(measure, max_slots, budget_s) == expected
    assert len(calls) == len(set(calls)) <= 2 * max_slots.bit_length() + 1
    assert max(calls) <= max_slots


def test_measure_tick_times_full_ticks_and_frees_the_model(tiny_model: LoadedModel) -> None:
    seconds = measure_tick_s(tiny_model, 2, SamplingParams(), ticks=3)
    assert 0 < seconds < 5
    with BatchedEngine(tiny_model, slots=1, sampling=SamplingParams()):
        pass  # the measuring engine was closed: the model streams again


def test_a_cpu_replica_sizes_to_its_share_of_a_core() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert tick_budget_s(0.6, cpu) == pytest.approx(0.048)
    assert tick_budget_s(0.6, cpu, cpu_share=0.5) == pytest.approx(0.024)
    assert tick_budget_s(0.6, cpu, cpu_share=4) == pytest.approx(0.048)  # one tick uses one core's time
    assert tick_budget_s(0.6, gpu, cpu_share=0.5) == pytest.approx(0.048)  # a GPU's tick is not CPU time
    with pytest.raises(ValueError):
        tick_budget_s(0.0, cpu)


def test_a_smaller_share_never_sizes_a_replica_larger(tiny_model: LoadedModel) -> None:
    whole = resolve_slots(tiny_model, "auto", 4, SamplingParams())
    quarter = resolve_slots(tiny_model, "auto", 4, SamplingParams(), cpu_share=0.25)
    assert 1 <= quarter <= whole <= 4


def test_resolve_slots_on_cpu(tiny_model: LoadedModel) -> None:
    assert 1 <= resolve_slots(tiny_model, "auto", 4, SamplingParams()) <= 4
    assert resolve_slots(tiny_model, 3, 64, SamplingParams()) == 3  # fixed: memory is the only check


# --- configuration ------------------------------------------------------------------------------------------


def test_model_config_takes_a_count_or_auto() -> None:
    spec = ModelSpec(tiny_seed=1)
    assert ModelConfig(id="m", spec=spec).slots == 8
    assert ModelConfig(id="m", spec=spec).max_slots == 64
    assert ModelConfig(id="m", spec=spec, slots="auto", max_slots=12).slots == "auto"
    for bad in (0, 1025, True, "many"):
        with pytest.raises(ValueError):
            ModelConfig(id="m", spec=spec, slots=bad)
    for bad_max in (0, 1025):
        with pytest.raises(ValueError):
            ModelConfig(id="m", spec=spec, slots="auto", max_slots=bad_max)
    with pytest.raises(ValueError, match="exceeds max_slots"):
        ModelConfig(id="m", spec=spec, slots=16, max_slots=12)
