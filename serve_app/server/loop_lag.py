"""How late the event loop runs its callbacks: the ingress's own measure of overload.

A session's every event passes through one loop; once callbacks run tens of milliseconds late, every
session on it is late too, so new sessions are refused until the loop catches up.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

PROBE_INTERVAL_S = 0.05
WINDOW = 40
"""Probes considered (2 s)."""
SPIKES_IGNORED = 2
"""A lone pause (a GC pass, a burst of handshakes) is not overload: the judgement ignores the worst two."""


class LoopLag:
    """Runs a probe task on the current loop; `recent_s` is how late it ran in the last window, its
    `SPIKES_IGNORED` worst probes left out."""

    def __init__(self, interval_s: float = PROBE_INTERVAL_S, window: int = WINDOW) -> None:
        self._interval = interval_s
        self._lags: deque[float] = deque(maxlen=window)
        self._task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(self._interval)
            self._lags.append(max(0.0, time.monotonic() - started - self._interval))

    @property
    def recent_s(self) -> float:
        ranked = sorted(self._lags, reverse=True)
        return ranked[SPIKES_IGNORED] if len(ranked) > SPIKES_IGNORED else 0.0

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
