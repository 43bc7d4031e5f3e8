"""SessionInbox (the per-ingress input channel) and SessionLedger, without Ray."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from deployments.inbox import SessionInbox
from deployments.ray_gateway import SessionLedger


def _pcm(value: float) -> np.ndarray:
    return np.full(4, value, dtype=np.float32)


async def test_take_returns_everything_queued_in_order() -> None:
    inbox = SessionInbox()
    inbox.open("s1")
    assert inbox.put("s1", _pcm(1)) and inbox.put("s1", _pcm(2))
    chunks = await inbox.take("s1")
    assert chunks is not None
    assert [float(c[0]) for c in chunks] == [1.0, 2.0]


async def test_take_waits_for_audio_then_close_ends_the_reader() -> None:
    inbox = SessionInbox()
    inbox.open("s1")
    reader = asyncio.create_task(inbox.take("s1"))
    await asyncio.sleep(0.01)
    assert not reader.done()
    inbox.put("s1", _pcm(3))
    assert [float(c[0]) for c in (await reader) or []] == [3.0]
    reader = asyncio.create_task(inbox.take("s1"))
    await asyncio.sleep(0.01)
    inbox.close("s1")
    assert await reader is None


async def test_audio_before_close_is_delivered_then_the_end() -> None:
    inbox = SessionInbox()
    inbox.open("s1")
    reader = asyncio.create_task(inbox.take("s1"))
    await asyncio.sleep(0)
    inbox.put("s1", _pcm(1))
    inbox.put("s1", _pcm(2))
    inbox.close("s1")
    first = await reader
    assert first is not None and len(first) >= 1
    rest = []
    while (more := await inbox.take("s1")) is not None:
        rest.extend(more)
    assert len(first) + len(rest) == 2


async def test_unknown_or_closed_sessions_refuse_input() -> None:
    inbox = SessionInbox()
    assert not inbox.put("nobody", _pcm(1))
    assert await inbox.take("nobody") is None
    inbox.open("s1")
    inbox.close("s1")
    assert not inbox.put("s1", _pcm(1))
    assert inbox.open_sessions() == 0


async def test_a_reader_that_stopped_reading_makes_put_fail() -> None:
    inbox = SessionInbox(max_chunks=3)
    inbox.open("s1")
    assert all(inbox.put("s1", _pcm(i)) for i in range(3))
    assert not inbox.put("s1", _pcm(4))


def test_open_twice_is_an_error() -> None:
    inbox = SessionInbox()
    inbox.open("s1")
    with pytest.raises(ValueError, match="already open"):
        inbox.open("s1")


def test_ledger_counts_frames_per_replica_and_forgets_old_sessions() -> None:
    ledger = SessionLedger(capacity=2)
    for sid in ("a", "b", "c"):
        ledger.record(sid, "r1")
    ledger.record("c", "r1")
    assert ledger.snapshot() == {"b": {"r1": 1}, "c": {"r1": 2}}
