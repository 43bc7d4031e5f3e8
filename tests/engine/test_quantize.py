"""Weight-only 8-bit LM: it loads through the loader, steps in a batch, stays close to the float model, takes
less memory; the 24 GB card profile of configs/production.yaml fits 24 GB and fails clearly below."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from moshi.models import loaders
from moshi.models.lm import LMModel

from serve_app.config import ModelConfig
from serve_app.engine import quantize
from serve_app.engine.batch import BatchedEngine
from serve_app.engine.loader import CheckpointError, LoadedModel, load_model
from serve_app.engine.quantize import (
    QuantizationUnsupported,
    WeightOnlyLinear,
    check_supported,
    module_bytes,
    quantize_lm,
    quantize_weight,
)
from serve_app.engine.sizing import SlotsDoNotFit, check_replica_fits, kv_cache_bytes_per_slot
from serve_app.engine.spec import ModelSpec, SamplingParams
from tests.engine.support import noise

ROOT = Path(__file__).resolve().parents[2]
GIB = 2**30
CARD_24GB = 23_028 * 2**20
"""An A10G / L4 as nvidia-smi reports it (23,028 MiB = 22.5 GiB)."""

# Error bounds, relative L2 error of a step's logits against the float model fed the same tokens.
# int8 per output channel rounds each weight to a step of amax/127; for these Gaussian-initialised weights
# amax ≈ 3.5 σ, so the rounding noise is ≈ 3.5/127/√12 ≈ 0.8 % of σ and each linear's output moves by
# ≈ 0.8 % rms. Two temporal layers and the depformer (4 linears each, residual stream in between) compound
# that to a few percent: measured mean 1.0 % (text) / 1.7 % (audio), worst step 4.5 %. The bounds leave
# 2-3x margin; a scale on the wrong axis or a transposed weight gives errors of order 100 %.
# fp8 e4m3 keeps 3 mantissa bits: ≈ 2^-4/√3 ≈ 3.6 % rms per weight, measured mean 4.2 %, worst 20 %.
INT8_MEAN, INT8_WORST = 0.03, 0.10
FP8_MEAN, FP8_WORST = 0.10, 0.40
TEACHER_STEPS = 40


def _tokens(lm: LMModel, batch: int, steps: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    tokens = torch.empty(batch, lm.num_codebooks, steps, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, lm.text_card, (batch, steps), generator=generator)
    tokens[:, 1:] = torch.randint(0, lm.card, (batch, lm.num_codebooks - 1, steps), generator=generator)
    return tokens


def _teacher_forced(lm: LMModel, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Text logits and the first audio codebook's logits of each step, the inputs given (not sampled)."""
    batch, _, steps = tokens.shape
    text, audio = [], []
    assert lm.depformer is not None
    with torch.no_grad(), lm.streaming(batch):
        for step in range(steps):
            out, logits = lm.forward_text(tokens[:, :, step : step + 1])
            text.append(logits[:, 0, 0].float())
            with lm.depformer.streaming(batch):
                audio.append(lm.forward_depformer(0, tokens[:, :1, step : step + 1], out)[:, 0, 0].float())
    return torch.stack(text, 1), torch.stack(audio, 1)


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    error: torch.Tensor = (got - want).norm(dim=-1) / want.norm(dim=-1)
    return error


@pytest.fixture(scope="module")
def int8_model(tiny_dir: Path) -> LoadedModel:
    return load_model(ModelSpec(local_dir=tiny_dir, device="cpu", quantize="int8"))


def test_int8_loads_through_the_loader_with_8_bit_linears_and_less_memory(
    int8_model: LoadedModel, tiny_model: LoadedModel
) -> None:
    lm = int8_model.lm
    converted = [m for m in lm.modules() if isinstance(m, WeightOnlyLinear)]
    assert converted and all(m.qweight.dtype == torch.int8 and m.mode == "int8" for m in converted)
    assert lm.transformer is not None and lm.depformer is not None
    for transformer in (lm.transformer, lm.depformer):
        plain = [m for m in transformer.modules() if type(m) is torch.nn.Linear]
        assert plain == []  # every transformer linear is 8-bit
    # fp32 weights -> int8 + one fp32 scale per row: the transformers shrink almost 4x.
    float_lm = tiny_model.lm
    assert float_lm.transformer is not None and float_lm.depformer is not None
    for name in ("transformer", "depformer"):
        before = module_bytes(getattr(float_lm, name))
        after = module_bytes(getattr(lm, name))
        assert after < before / 3.5, (name, before, after)
    assert module_bytes(lm) < module_bytes(float_lm)
    # Heads, embeddings and Mimi stay as loaded; the KV cache stays in the compute dtype.
    assert lm.text_linear.weight.dtype == torch.float32 and not isinstance(lm.text_linear, WeightOnlyLinear)
    assert kv_cache_bytes_per_slot(int8_model) == kv_cache_bytes_per_slot(tiny_model)


def test_int8_steps_in_a_batch_of_two(int8_model: LoadedModel) -> None:
    sampling = SamplingParams(use_sampling=False)
    with BatchedEngine(int8_model, slots=2, sampling=sampling) as engine:
        engine.warmup()
        slots = [engine.open_slot(), engine.open_slot()]
        for index, slot in enumerate(slots):
            engine.push(slot, noise(12, seed=index))
        produced: dict[int, int] = {0: 0, 1: 0}
        for _ in range(12):
            for slot, frame in engine.tick().items():
                assert frame.pcm.shape == (1920,) and np.isfinite(frame.pcm).all()
                produced[slot] += 1
        assert produced == {0: 11, 1: 11}  # every step after the first (moshi's acoustic delay)


@pytest.mark.parametrize(
    ("mode", "mean_bound", "worst_bound"), [("int8", INT8_MEAN, INT8_WORST), ("fp8", FP8_MEAN, FP8_WORST)]
)
def test_quantized_logits_stay_close_to_the_float_model(
    tiny_model: LoadedModel, mode: quantize.QuantizeMode, mean_bound: float, worst_bound: float
) -> None:
    float_lm = tiny_model.lm
    quantized = copy.deepcopy(float_lm)
    report = quantize_lm(quantized, mode)
    assert report.linears > 0 and report.bytes_after < report.bytes_before
    tokens = _tokens(float_lm, batch=2, steps=TEACHER_STEPS)
    want_text, want_audio = _teacher_forced(float_lm, tokens)
    got_text, got_audio = _teacher_forced(quantized, tokens)
    for got, want in ((got_text, want_text), (got_audio, want_audio)):
        error = _relative_error(got, want)
        assert float(error.mean()) < mean_bound, (mode, float(error.mean()))
        assert float(error.max()) < worst_bound, (mode, float(error.max()))
    # Not a vacuous comparison: the quantized model does differ from the float one.
    assert float(_relative_error(got_text, want_text).mean()) > 1e-4


def test_a_weight_round_trips_within_half_a_step_per_channel() -> None:
    weight = torch.randn(64, 96, generator=torch.Generator().manual_seed(0))
    weight[3] *= 100  # one loud row must not coarsen the others' scale
    q, scale = quantize_weight(weight, "int8")
    assert q.dtype == torch.int8 and scale.shape == (64,)
    error = (q.float() * scale[:, None] - weight).abs()
    assert bool((error <= scale[:, None] / 2 + 1e-6).all())
    assert float(scale[0]) < float(scale[3]) / 10


def test_fp8_is_refused_before_loading_on_a_gpu_without_it(
    monkeypatch: pytest.MonkeyPatch, tiny_dir: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A10G")
    with pytest.raises(
        QuantizationUnsupported, match=r"fp8 needs .* 8\.9 .* A10G is 8\.6\. Use quantize: int8"
    ):
        check_supported("fp8", torch.device("cuda"))
    check_supported("int8", torch.device("cuda"))  # int8 runs anywhere
    check_supported("fp8", torch.device("cpu"))  # emulated on a CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(CheckpointError, match="fp8 needs"):
        load_model(ModelSpec(local_dir=tiny_dir, device="cuda", quantize="fp8"))


# --- the 24 GB card profile -------------------------------------------------------------------------------


def _profile_24gb() -> ModelConfig:
    """The commented profile block of configs/production.yaml, parsed as a model entry."""
    text = (ROOT / "configs" / "production.yaml").read_text()
    found = re.search(r"# profile-24gb-begin\n(.*?)\n\s*# profile-24gb-end", text, re.S)
    assert found, "configs/production.yaml lost its 24 GB profile markers"
    block = "\n".join(re.sub(r"^\s*# ?", "", line) for line in found.group(1).splitlines())
    (entry,) = yaml.safe_load(block)
    return ModelConfig.model_validate(entry)


def _meta_7b(quantize_mode: quantize.QuantizeMode) -> LoadedModel:
    """Moshi 7B and Mimi as the loader builds them, on the meta device (shapes and dtypes, no memory)."""
    with torch.device("meta"):
        lm = loaders.get_moshi_lm(None, lm_kwargs=None, device="meta", dtype=torch.bfloat16)
        mimi = loaders.get_mimi(None, None, device="meta")
    quantize_lm(lm, quantize_mode)
    return LoadedModel(
        mimi=mimi, lm=lm, tokenizer=None, lm_gen_config={}, device=torch.device("meta"), dtype=torch.bfloat16
    )


def test_the_24gb_profile_fits_a_24gb_card_and_fails_clearly_on_a_smaller_one() -> None:
    profile = _profile_24gb()
    assert profile.spec.quantize == "int8" and profile.spec.hf_repo == "kyutai/moshiko-pytorch-bf16"
    assert isinstance(profile.slots, int)
    model = _meta_7b(profile.spec.quantize)
    plan = check_replica_fits(model, profile.slots, CARD_24GB, model_id=profile.id)
    assert 7 * GIB < plan.weight_bytes < 8.5 * GIB  # int8 LM 7.6 GiB + fp32 Mimi
    assert plan.slots_that_fit >= profile.slots and plan.total < CARD_24GB
    with pytest.raises(SlotsDoNotFit) as raised:
        check_replica_fits(model, profile.slots, 16 * GIB, model_id=profile.id)
    message = str(raised.value)
    assert f"model {profile.id!r}: slots: {profile.slots} needs" in message
    assert "at most 4 fit here" in message and "quantize: int8" in message and "16.0 GiB card" in message


def test_bf16_weights_leave_a_24gb_card_4_slots_and_the_error_names_the_int8_option() -> None:
    model = _meta_7b("none")
    assert check_replica_fits(model, 4, CARD_24GB).slots_that_fit == 4  # docs/ENGINE_FACTS.md's table
    with pytest.raises(
        SlotsDoNotFit, match=r"at most 4 fit here.*`quantize: int8` in the model's spec halves"
    ):
        check_replica_fits(model, 8, CARD_24GB)
