"""LoopLag: how late the ingress loop runs its callbacks, a lone pause ignored."""

from __future__ import annotations

import asyncio
import time

from serve_app.server.loop_lag import LoopLag


async def _block(seconds: float) -> None:
    time.sleep(seconds)  # what an overloaded loop looks like to its other tasks
    await asyncio.sleep(0.06)


async def test_a_loop_that_keeps_running_late_is_seen_and_a_lone_pause_is_not() -> None:
    lag = LoopLag(interval_s=0.02)
    lag.ensure_running()
    try:
        await asyncio.sleep(0.2)
        assert lag.recent_s < 0.05
        await _block(0.2)  # one pause: ignored
        assert lag.recent_s < 0.05
        for _ in range(3):
            await _block(0.2)
        assert lag.recent_s > 0.15
    finally:
        lag.stop()
