"""A token bucket over appended input audio: how fast a client may send audio, as a multiple of real time.

Moshi consumes input at exactly real time, and the input backlog bound already refuses audio that would
wait more than a minute. This bucket is the cheaper, earlier guard: it judges an append by its encoded
size *before* it is decoded, so a client flooding appends costs the ingress no base64 or resampling work.
It refills on the session's clock ticks, so it needs no clock of its own (sans-I/O).
"""

from __future__ import annotations


class AppendRate:
    """Audio milliseconds a client may still append; refills at `rate` × wall time, holds at most
    `burst_ms`. A bucket with `rate` None never refuses."""

    def __init__(self, rate: float | None, burst_ms: int) -> None:
        self.rate = rate
        self.burst_ms = burst_ms
        self._tokens_ms = float(burst_ms)
        self._last_s: float | None = None

    @property
    def available_ms(self) -> float:
        return self._tokens_ms

    def refill(self, now_s: float) -> None:
        """A clock tick: credit the wall time since the previous tick (the first tick only starts it)."""
        if self.rate is not None and self._last_s is not None and now_s > self._last_s:
            credit = (now_s - self._last_s) * 1000 * self.rate
            self._tokens_ms = min(float(self.burst_ms), self._tokens_ms + credit)
        self._last_s = now_s

    def take(self, duration_ms: float) -> bool:
        """Spend `duration_ms` of audio if the bucket holds it; False (and nothing spent) if not."""
        if self.rate is None:
            return True
        if duration_ms > self._tokens_ms:
            return False
        self._tokens_ms -= duration_ms
        return True


__all__ = ["AppendRate"]
