"""The model replica's metrics that are derived rather than recorded as they happen."""

from __future__ import annotations

from typing import Any

import pytest

from deployments.metrics import ModelMetrics


def test_the_prompt_cache_counters_are_exported_as_increments(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = ModelMetrics("personaplex")
    added: list[tuple[float, dict[str, str]]] = []
    sizes: list[float] = []

    def inc(value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        added.append((value, dict(tags or {})))

    def set_gauge(value: float, tags: Any = None) -> None:
        sizes.append(value)

    monkeypatch.setattr(metrics.prompt_cache_lookups, "inc", inc)
    monkeypatch.setattr(metrics.prompt_cache_bytes, "set", set_gauge)
    stats = {"entries": 1, "bytes": 4096, "budget_bytes": 1 << 20, "hits": 0, "misses": 1, "evictions": 0}
    metrics.record_prompt_cache(stats)
    metrics.record_prompt_cache({**stats, "hits": 3})  # two more hits, no new miss
    metrics.record_prompt_cache({**stats, "hits": 3})  # nothing new: nothing added
    assert added == [(1, {"result": "miss"}), (3, {"result": "hit"})]
    assert sizes == [4096, 4096, 4096]
