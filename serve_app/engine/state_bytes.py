"""What moshi's streaming states actually hold, in bytes: the measurement `sizing.py`'s estimate is checked
against (tests/engine/test_sizing.py, the GPU check)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from moshi.modules.streaming import StreamingModule
from moshi.modules.transformer import RingKVCache
from torch import nn

__all__ = ["streaming_state_bytes"]


def _tensor_bytes(obj: Any, seen: set[int], depth: int = 0) -> int:
    """Bytes of the tensors reachable from a streaming state (each storage counted once)."""
    if depth > 4:
        return 0
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return int(storage.nbytes())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(x, seen, depth + 1) for x in obj)
    if isinstance(obj, RingKVCache) or dataclasses.is_dataclass(obj):
        return sum(_tensor_bytes(x, seen, depth + 1) for x in vars(obj).values())
    return 0


def streaming_state_bytes(*roots: nn.Module) -> int:
    """Bytes of every tensor held by the modules' streaming states (what `streaming(B)` allocated)."""
    seen: set[int] = set()
    return sum(
        _tensor_bytes(module._streaming_state, seen)
        for root in roots
        for module in root.modules()
        if isinstance(module, StreamingModule) and module._streaming_state is not None
    )
