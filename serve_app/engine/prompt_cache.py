"""What a prompt prefill leaves in the LM, kept per (model, voice, instructions) so it is computed once.

A prefill from position 0 fills exactly the first S positions of every self-attention layer's KV ring
(S = the prompt's steps) and sets LMGen's delayed-token ring; everything else about the row follows from
S. So a `PromptState` holds only those S positions (not the 3000-position ring: a 150-frame prompt of the
7B is 79 MB instead of 1.5 GB) and can be put into any row of a live batch in place, between ticks.
Positions past S in that row keep whatever an earlier session left: the ring's end offset masks them until
they are overwritten, exactly as after a reset.

`PromptCache` bounds the states it keeps by bytes (they live on the model's device), evicting the least
recently used.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from moshi.models.lm import LMGen
from moshi.modules.transformer import StreamingMultiheadAttention, StreamingTransformer

__all__ = ["DEFAULT_PROMPT_CACHE_BYTES", "PromptCache", "PromptKey", "PromptState", "self_attentions"]

DEFAULT_PROMPT_CACHE_BYTES = 512 * 1024 * 1024
"""About six 150-frame persona prompts of the 7B in bf16; thousands of the tiny model's."""

PromptKey = tuple[str, ...]
"""(model, voice, instructions) — or any tuple naming what the prompt is made of."""


def self_attentions(transformer: StreamingTransformer) -> list[StreamingMultiheadAttention]:
    """The self-attention layers with a KV cache, in a fixed (module) order."""
    return [
        m
        for m in transformer.modules()
        if isinstance(m, StreamingMultiheadAttention) and not m.cross_attention
    ]


@dataclass(frozen=True)
class PromptState:
    """The LM state after S prompt steps from position 0, for one row."""

    steps: int
    kv: tuple[torch.Tensor, ...]
    """Per self-attention layer: [2, heads, S, head_dim], keys then values of positions 0..S-1."""
    ring: torch.Tensor
    """[K, CT] long: LMGen's delayed-token ring after the S steps."""

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.kv, self.ring))

    @staticmethod
    def capture(transformer: StreamingTransformer, ring: npt.NDArray[np.int64], steps: int) -> PromptState:
        """Copy the filled positions out of a batch-of-one streaming state that stepped exactly `steps`."""
        kv: list[torch.Tensor] = []
        for attention in self_attentions(transformer):
            state = attention._streaming_state
            assert state is not None and state.kv_cache is not None
            cache = state.kv_cache
            if cache.cache.shape[1] != 1 or int(cache.end_offset[0]) != steps or cache.capacity < steps:
                raise RuntimeError(f"cannot capture {steps} prompt steps from this state")
            kv.append(cache.cache[:, 0, :, :steps].clone())
        device = kv[0].device if kv else torch.device("cpu")
        return PromptState(steps, tuple(kv), torch.from_numpy(np.ascontiguousarray(ring)).to(device))

    def install(self, transformer: StreamingTransformer, lm_gen: LMGen, row: int) -> None:
        """Make `row` of the live batched state exactly what the prompt left (in place: CUDA graphs captured
        on the live tensors stay valid). The caller holds the engine's tick lock."""
        attentions = self_attentions(transformer)
        if len(attentions) != len(self.kv):
            raise RuntimeError(f"prompt state has {len(self.kv)} layers, the model {len(attentions)}")
        steps = self.steps
        for attention, kv in zip(attentions, self.kv, strict=True):
            state = attention._streaming_state
            assert state is not None and state.kv_cache is not None
            cache = state.kv_cache
            if not cache.respect_exec_mask or cache.capacity < steps:
                raise RuntimeError("this attention's KV cache cannot take a per-row prompt")
            cache.cache[:, row, :, :steps].copy_(kv)
            cache.end_offset[row] = steps
            state.offset[row] = steps
        top = transformer._streaming_state
        gen = lm_gen._streaming_state
        assert top is not None and gen is not None
        top.offsets[row] = steps
        gen.cache[row].copy_(self.ring)
        gen.offsets[row] = steps


class PromptCache:
    """LRU of prompt states under a byte budget, with hit/miss/eviction counters. Thread-safe."""

    def __init__(self, budget_bytes: int = DEFAULT_PROMPT_CACHE_BYTES) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[PromptKey, PromptState] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def get(self, key: PromptKey) -> PromptState | None:
        """The state for `key` (now the most recently used), counting a hit or a miss."""
        with self._lock:
            state = self._entries.get(key)
            if state is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return state

    def put(self, key: PromptKey, state: PromptState) -> bool:
        """Keep `state`, evicting the least recently used until it fits; False if it alone is over budget."""
        size = state.nbytes
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            if size > self.budget_bytes:
                return False
            while self._entries and self.bytes + size > self.budget_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= evicted.nbytes
                self.evictions += 1
            self._entries[key] = state
            self.bytes += size
            return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self.bytes,
                "budget_bytes": self.budget_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
            }
