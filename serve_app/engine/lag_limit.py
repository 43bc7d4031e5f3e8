"""The lag limit: which session the engine clock ends because its input waits too long to be answered.

A session whose oldest input frame is far past due cannot be served in real time any more; answering it
seconds late is worse than ending it (`FellBehind`), and ending it gives its neighbours their time back.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_MAX_LAG_S = 1.0
"""A session whose oldest input frame is this far past due is ended (`FellBehind`)."""
SHED_GRACE_S = 1.0
"""How long a session past the lag limit may take to start catching up before it is ended."""
SHED_INTERVAL_S = 0.5
"""At most one session is ended for lag per interval: ending one frees time for the rest to recover."""


class LagLimit:
    """Picks the session past its lag limit that is not catching up (one per SHED_INTERVAL_S).

    A session over the limit gets `SHED_GRACE_S` to recover (catch-up ticks, a neighbour's warm-up
    ending); it is ended only if its lag did not shrink by a period in that time. Clock thread only."""

    def __init__(self, max_lag_s: float, *, period_s: float) -> None:
        self.max_lag_s = max_lag_s
        self._period = period_s
        self._last_shed = float("-inf")
        self._over_limit: dict[int, tuple[float, float]] = {}
        """slot → (when its lag first exceeded the limit, the lag then)."""

    def to_end(self, lateness: Mapping[int, float], now: float) -> tuple[int, float] | None:
        """(slot, its lag) of the session to end now, given every open slot's lag; None: none."""
        lags = {slot: lag for slot, lag in lateness.items() if lag > self.max_lag_s}
        for slot in list(self._over_limit):
            if slot not in lags:
                del self._over_limit[slot]  # recovered (or closed)
        hopeless: dict[int, float] = {}
        for slot, lag in lags.items():
            since, lag_then = self._over_limit.setdefault(slot, (now, lag))
            if now - since < SHED_GRACE_S:
                continue
            if lag > lag_then - self._period:  # not one frame regained in the grace period
                hopeless[slot] = lag
            else:
                self._over_limit[slot] = (now, lag)  # catching up: judge it again after another grace
        if not hopeless or now - self._last_shed < SHED_INTERVAL_S:
            return None
        slot, lag = max(hopeless.items(), key=lambda item: item[1])
        self._over_limit.pop(slot, None)
        self._last_shed = now
        return slot, lag
