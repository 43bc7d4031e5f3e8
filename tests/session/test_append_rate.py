"""The append-rate token bucket on its own."""

from __future__ import annotations

from serve_app.session.append_rate import AppendRate


def test_it_starts_full_and_refuses_what_it_does_not_hold_without_spending_it() -> None:
    bucket = AppendRate(2.0, burst_ms=1000)
    assert bucket.take(600)
    assert not bucket.take(500)
    assert bucket.available_ms == 400
    assert bucket.take(400)


def test_it_refills_at_the_rate_between_ticks_and_never_beyond_the_burst() -> None:
    bucket = AppendRate(3.0, burst_ms=1000)
    assert bucket.take(1000)
    bucket.refill(10.0)  # the first tick only starts the clock
    assert bucket.available_ms == 0
    bucket.refill(10.2)
    assert abs(bucket.available_ms - 600) < 1e-6
    bucket.refill(20.0)
    assert bucket.available_ms == 1000
    bucket.refill(19.0)  # a clock that goes backwards credits nothing
    assert bucket.available_ms == 1000


def test_without_a_rate_it_never_refuses() -> None:
    bucket = AppendRate(None, burst_ms=80)
    assert all(bucket.take(10_000) for _ in range(3))
