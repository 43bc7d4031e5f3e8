"""A PersonaPlex prompt prefilled in one pass into a live batch row continues exactly as the same prompt
stepped frame by frame through LMGen (teacher forcing), while the slot beside it keeps its own stream
bit-for-bit (greedy, tiny PersonaPlex checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest
import torch

from serve_app.engine.batch import BatchedEngine
from serve_app.engine.loader import LoadedModel
from serve_app.engine.prompt import PromptPlan, PromptPrefill, persona_plan, step_framewise
from serve_app.engine.prompt_cache import PromptCache
from serve_app.engine.rebuild import LM_CHUNK_STEPS
from serve_app.engine.spec import SamplingParams
from tests.engine.support import noise

GREEDY = SamplingParams(use_sampling=False)
AFTER = 24
"""Frames of greedy continuation compared after the prompt."""
ROLE = "you are a calm guide who answers in few words"


@dataclass
class Run:
    tokens: list[npt.NDArray[np.int64]] = field(default_factory=list)
    neighbour: list[npt.NDArray[np.int64]] = field(default_factory=list)
    job: PromptPrefill | None = None
    chunks: int = 0


def plan_for(model: LoadedModel, voice: str = "NATM1", role: str = ROLE) -> PromptPlan:
    return persona_plan(
        model.lm, model.tokenizer, model.voices, voice=voice, instructions=role, model_key="tiny"
    )


def run(
    model: LoadedModel,
    plan: PromptPlan | None,
    *,
    framewise: bool = False,
    cache: PromptCache | None = None,
    frames: int = AFTER,
) -> Run:
    """Slot 1 streams noise; slot 0 opens after 10 of its frames, takes the prompt between ticks, then
    streams its own noise for `frames` frames."""
    out = Run()
    with BatchedEngine(model, slots=2, sampling=GREEDY) as engine:
        if cache is not None:
            engine.prompt_cache = cache
        beside = engine.open_slot()
        engine.push(beside, noise(frames + 80, seed=8))
        for _ in range(10):
            engine.tick()
            out.neighbour.append(engine.last_tokens[beside].copy()) if beside in engine.last_tokens else None
        slot = engine.open_slot()
        if plan is not None:
            out.job = engine.start_prompt(slot, plan, framewise=framewise)
        engine.push(slot, noise(frames + 1, seed=7))  # a fresh slot's first step yields no frame
        while engine.rebuilding:  # the neighbour keeps stepping between the prompt's chunks
            produced = engine.tick()
            assert slot not in produced
            out.neighbour.append(engine.last_tokens[beside].copy())
            engine.rebuild_step()
            out.chunks += 1
        for _ in range(frames + 1):
            produced = engine.tick()
            out.neighbour.append(engine.last_tokens[beside].copy())
            if slot in produced and len(out.tokens) < frames:
                out.tokens.append(engine.last_tokens[slot].copy())
    return out


def alone(model: LoadedModel, frames: int) -> list[npt.NDArray[np.int64]]:
    tokens = []
    with BatchedEngine(model, slots=2, sampling=GREEDY) as engine:
        slot = engine.open_slot()
        engine.push(slot, noise(frames, seed=8))
        for _ in range(frames):
            engine.tick()
            if slot in engine.last_tokens:
                tokens.append(engine.last_tokens[slot].copy())
    return tokens


def test_the_plan_is_personaplex_prompt(tiny_persona: LoadedModel) -> None:
    plan = plan_for(tiny_persona)
    voice = tiny_persona.voices["NATM1"]
    role = len(tiny_persona.tokenizer.encode(f"<system> {ROLE} <system>"))
    assert plan.steps == voice.frames + 6 + role + 6
    assert plan.steps > LM_CHUNK_STEPS  # more than one chunk
    assert plan.embedded == voice.frames - 1
    pad, text = int(tiny_persona.lm.text_padding_token_id), plan.forced[:, 0]
    # Step o writes the text of frame o + 1: PAD through the voice and silence, the role, PAD again.
    start = voice.frames + 6
    assert (text[: start - 1] == pad).all() and (text[start - 1 + role :] == pad).all()
    assert text[start - 1 : start - 1 + role].tolist() == tiny_persona.tokenizer.encode(
        f"<system> {ROLE} <system>"
    )
    assert plan.user.tolist() == [list((430, 1268, 381, 1611, 1095, 1495, 56, 472))] * plan.steps
    assert plan.forced[-1, 1:].tolist() == [948, 243, 1178, 546, 1736, 1030, 1978, 2008]


def test_one_pass_prefill_continues_as_the_frame_by_frame_reference(tiny_persona: LoadedModel) -> None:
    plan = plan_for(tiny_persona)
    reference = run(tiny_persona, plan, framewise=True)
    one_pass = run(tiny_persona, plan)
    assert one_pass.job is not None and not one_pass.job.cache_hit
    # A few causal forward passes of LM_CHUNK_STEPS positions, one per `rebuild_step`; then it is in.
    assert one_pass.chunks == -(-plan.steps // LM_CHUNK_STEPS) >= 2
    assert len(one_pass.tokens) == len(reference.tokens) == AFTER
    for got, want in zip(one_pass.tokens, reference.tokens, strict=True):
        np.testing.assert_array_equal(got, want)
    # The prompt is what the continuation depends on: without it (or with another voice) it goes elsewhere.
    for other in (run(tiny_persona, None), run(tiny_persona, plan_for(tiny_persona, voice="VARF2"))):
        same = sum(np.array_equal(a, b) for a, b in zip(other.tokens, reference.tokens, strict=True))
        assert same < AFTER // 2
    # The neighbour: bit-identical to streaming alone, whichever way the prompt went in beside it.
    solo = alone(tiny_persona, len(one_pass.neighbour) + 5)
    for neighbour in (one_pass.neighbour, reference.neighbour):
        assert len(neighbour) > AFTER
        for got, want in zip(neighbour, solo, strict=False):
            np.testing.assert_array_equal(got, want)


def test_framewise_reference_matches_a_plain_lmgen(tiny_persona: LoadedModel) -> None:
    """The in-engine reference equals teacher forcing through a batch-of-one LMGen of its own: same ring,
    and the same state (the next greedy step's tokens agree)."""
    from moshi.models.lm import LMGen

    plan = plan_for(tiny_persona, voice="NATF0", role="be brief")
    lm_gen = LMGen(tiny_persona.lm, use_sampling=False, support_out_of_sync=True)
    with lm_gen.streaming(1):
        step_framewise(lm_gen, plan)
        state = lm_gen._streaming_state
        assert state is not None
        np.testing.assert_array_equal(state.cache[0].numpy(), plan.ring)
        assert int(state.offsets[0]) == plan.steps
        user = torch.tensor(plan.user[-1])[None, :, None]
        first = lm_gen.step(user)
    assert first is not None
    with lm_gen.streaming(1):
        job = PromptPrefill(tiny_persona.lm, lm_gen, 0, plan)
        while not job.step():
            pass
        second = lm_gen.step(user)
    assert second is not None
    np.testing.assert_array_equal(first.numpy(), second.numpy())


def test_a_slot_that_stepped_cannot_take_a_prompt(tiny_persona: LoadedModel) -> None:
    plan = plan_for(tiny_persona, role="be brief")
    with BatchedEngine(tiny_persona, slots=1, sampling=GREEDY) as engine:
        slot = engine.open_slot()
        engine.push(slot, noise(1, seed=1))
        engine.tick()
        with pytest.raises(ValueError, match="cannot take a prompt"):
            engine.start_prompt(slot, plan)


def test_closing_a_slot_mid_prefill_leaves_the_engine_serving(tiny_persona: LoadedModel) -> None:
    plan = plan_for(tiny_persona)
    expected = alone(tiny_persona, 12)
    with BatchedEngine(tiny_persona, slots=2, sampling=GREEDY) as engine:
        slot = engine.open_slot()
        engine.start_prompt(slot, plan)
        engine.rebuild_step()  # the scratch state exists (first of two chunks)
        assert engine.rebuilding
        engine.close_slot(slot)
        engine.rebuild_step()  # drops it
        assert not engine.rebuilding and len(engine.prompt_cache) == 0
        again = engine.open_slot()
        engine.push(again, noise(12, seed=8))
        tokens = []
        for _ in range(12):
            engine.tick()
            if again in engine.last_tokens:
                tokens.append(engine.last_tokens[again].copy())
    for got, want in zip(tokens, expected, strict=True):
        np.testing.assert_array_equal(got, want)
