"""SendQueue: a socket's outgoing events, bounded in bytes and in audio time."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.server.send_queue import AUDIO_DELTA, ClientTooSlow, SendQueue
from serve_app.session.outbox import OutgoingEvent


def event(kind: str = "response.output_text.delta", size: int = 100) -> OutgoingEvent:
    return OutgoingEvent("x" * size, kind)


async def test_events_come_out_in_order_then_none_after_finish() -> None:
    queue = SendQueue(max_bytes=10_000, max_audio_ms=1000)
    first, second = event(size=10), event(size=20)
    queue.put(first)
    queue.put(second)
    queue.finish()
    assert [await queue.get(), await queue.get(), await queue.get()] == [first, second, None]
    assert queue.bytes == 0


async def test_a_getter_waits_for_the_next_event() -> None:
    queue = SendQueue(max_bytes=10_000, max_audio_ms=1000)
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0.01)
    assert not getter.done()
    queue.put(item := event())
    assert await asyncio.wait_for(getter, 1) is item


def test_bytes_are_bounded() -> None:
    queue = SendQueue(max_bytes=250, max_audio_ms=1000)
    queue.put(event(size=100))
    queue.put(event(size=100))
    with pytest.raises(ClientTooSlow, match="200 bytes"):
        queue.put(event(size=100))


async def test_audio_time_is_bounded_and_freed_as_events_leave() -> None:
    queue = SendQueue(max_bytes=1_000_000, max_audio_ms=240)  # 3 deltas of 80 ms
    for _ in range(3):
        queue.put(event(AUDIO_DELTA))
    queue.put(event())  # text costs no audio time
    with pytest.raises(ClientTooSlow, match="240 ms of audio"):
        queue.put(event(AUDIO_DELTA))
    await queue.get()
    assert queue.audio_ms == 160
    queue.put(event(AUDIO_DELTA))
