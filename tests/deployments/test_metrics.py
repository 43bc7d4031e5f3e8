"""The service's metrics: the model replica's derived counters, the ingress's delegate series."""

from __future__ import annotations

from typing import Any

import pytest
from ray.util.metrics import Metric

from deployments.metrics import DELEGATE_BUCKETS_S, DELEGATE_RESULTS, PREFIX, IngressMetrics, ModelMetrics


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


def test_the_delegate_series_are_exported_from_zero_and_counted_by_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every model and result has its series before the first call (a dashboard shows 0, not nothing);
    calls count by result with their latency, replies' function calls by number; labels stay bounded."""
    points: list[tuple[str, float, dict[str, str]]] = []

    def record(self: Metric, value: float, tags: dict[str, str] | None = None) -> None:
        points.append((self._name, value, {**self._default_tags, **(tags or {})}))

    monkeypatch.setattr(Metric, "_record", record)
    metrics = IngressMetrics(["moshi-a", "moshi-b"])
    results = {"ok", "tool_calls", "delegate_timeout", "delegate_failed", "delegate_invalid_reply"}
    assert set(DELEGATE_RESULTS) == results
    calls, latency, tools = (PREFIX + n for n in ("delegate_calls", "delegate_latency_seconds", "tool_calls"))
    assert sorted((name, value, tags["model"], tags.get("result")) for name, value, tags in points) == sorted(
        [(calls, 0, model, result) for model in ("moshi-a", "moshi-b") for result in results]
        + [(tools, 0, model, None) for model in ("moshi-a", "moshi-b")]
    )
    points.clear()
    metrics.delegate_call("moshi-a", "tool_calls", 1.25)
    metrics.tool_calls("moshi-a", 2)
    metrics.delegate_call("moshi-b", "delegate_timeout", 10.0)
    metrics.delegate_call("made-up", "ok", 0.5)  # a client's made-up model id: one shared label
    metrics.delegate_call("moshi-a", "no_such_result", 0.1)  # never a new series: counted as a failure
    metrics.tool_calls("moshi-b", 0)
    assert points == [
        (calls, 1, {"model": "moshi-a", "result": "tool_calls"}),
        (latency, 1.25, {"model": "moshi-a"}),
        (tools, 2, {"model": "moshi-a"}),
        (calls, 1, {"model": "moshi-b", "result": "delegate_timeout"}),
        (latency, 10.0, {"model": "moshi-b"}),
        (calls, 1, {"model": "unknown", "result": "ok"}),
        (latency, 0.5, {"model": "unknown"}),
        (calls, 1, {"model": "moshi-a", "result": "delegate_failed"}),
        (latency, 0.1, {"model": "moshi-a"}),
    ]
    assert DELEGATE_BUCKETS_S[0] <= 0.1 and DELEGATE_BUCKETS_S[-1] >= 30
