"""The prompt-state cache: a hit puts the same state into the slot as a fresh prefill (greedy continuation
token-identical), keeps only the prompt's positions, and stays within its byte budget, least recently used
out first."""

from __future__ import annotations

import numpy as np
import torch

from serve_app.engine.loader import LoadedModel
from serve_app.engine.prompt import PromptPrefill
from serve_app.engine.prompt_cache import PromptCache, PromptState, self_attentions
from tests.engine.test_prompt_prefill import AFTER, plan_for, run


def _state(nbytes: int) -> PromptState:
    return PromptState(1, (torch.zeros(nbytes // 4, dtype=torch.float32),), torch.zeros(0, dtype=torch.long))


def test_a_hit_leaves_the_slot_as_a_fresh_prefill_does(tiny_persona: LoadedModel) -> None:
    cache = PromptCache()
    plan = plan_for(tiny_persona)
    fresh = run(tiny_persona, plan, cache=cache)
    assert cache.stats()["misses"] == 1 and len(cache) == 1
    again = run(tiny_persona, plan_for(tiny_persona), cache=cache)  # a new plan, the same key
    assert isinstance(again.job, PromptPrefill) and again.job.cache_hit and not fresh.job.cache_hit  # type: ignore[union-attr]
    assert again.chunks == 1  # no forward pass: the cached positions are copied into the row
    assert cache.stats()["hits"] == 1
    assert len(again.tokens) == len(fresh.tokens) == AFTER
    for got, want in zip(again.tokens, fresh.tokens, strict=True):
        np.testing.assert_array_equal(got, want)
    # Another voice or other instructions are other keys: misses.
    run(tiny_persona, plan_for(tiny_persona, voice="NATF0"), cache=cache, frames=2)
    assert cache.stats()["misses"] == 2 and len(cache) == 2


def test_only_the_prompts_positions_are_kept(tiny_persona: LoadedModel) -> None:
    cache = PromptCache()
    plan = plan_for(tiny_persona)
    run(tiny_persona, plan, cache=cache, frames=1)
    state = cache.get(plan.key)
    assert state is not None and state.steps == plan.steps
    lm = tiny_persona.lm
    attentions = self_attentions(lm.transformer)
    assert len(state.kv) == len(attentions) == 2
    heads = attentions[0].num_heads
    head_dim = lm.dim // heads
    assert all(kv.shape == (2, heads, plan.steps, head_dim) for kv in state.kv)
    ring = 2 * len(state.kv) * heads * 3000 * head_dim * 4  # the whole 3000-position ring, float32
    assert state.nbytes < ring * plan.steps / 3000 * 1.01
    np.testing.assert_array_equal(state.ring.numpy(), plan.ring)


def test_lru_eviction_within_the_byte_budget() -> None:
    cache = PromptCache(budget_bytes=1000)
    assert cache.put(("m", "a", ""), _state(400)) and cache.put(("m", "b", ""), _state(400))
    assert cache.get(("m", "a", "")) is not None  # a is now the most recent: b goes first
    assert cache.put(("m", "c", ""), _state(400))
    assert ("m", "b", "") not in cache and ("m", "a", "") in cache and ("m", "c", "") in cache
    assert cache.stats() == {
        "entries": 2,
        "bytes": 800,
        "budget_bytes": 1000,
        "hits": 1,
        "misses": 0,
        "evictions": 1,
    }
    assert cache.get(("m", "b", "")) is None and cache.misses == 1
    assert not cache.put(("m", "huge", ""), _state(2000))  # alone over budget: not kept, nothing evicted
    assert len(cache) == 2 and cache.bytes == 800
    assert cache.put(("m", "a", ""), _state(800))  # replacing a key frees its old bytes first
    assert cache.bytes == 800 and len(cache) == 1 and cache.evictions == 2
