"""Limits of the socket shell on a live in-process server: a client that stops reading, an idle client,
concurrent sessions per API key, browser origins. Raw WebSocket clients; tight limits keep them short.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from serve_app.config import AppConfig, ModelConfig, RealtimeLimits
from serve_app.constants import FRAME_S, FRAME_SAMPLES
from serve_app.engine.spec import ModelSpec
from serve_app.protocol.codecs import encode_base64
from serve_app.session.settings import SessionSettings
from tests.fixtures.audio import speech_like, to_pcm16
from tests.server.conftest import RunningServer, serve_in_process

KEY = "sk-limits"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def tight_server() -> Iterator[RunningServer]:
    config = AppConfig(
        models=(
            ModelConfig(
                id="moshi-sft",
                spec=ModelSpec(tiny_seed=1),
                slots=3,
                realtime=RealtimeLimits(admit_fraction=None, max_lag_ms=5000),
            ),
        ),
        session=SessionSettings(utterance_silence_ms=480, idle_timeout_s=2),
        server={
            "api_keys": (KEY,),
            "allowed_origins": ("https://app.example",),
            "max_loop_lag_ms": None,
            "max_sessions_per_key": 2,
            "send_queue_bytes": 256 * 1024,
            "send_queue_audio_ms": 800,
            "send_timeout_s": 1.0,
            "ping_interval_s": 1.0,
            "ping_timeout_s": 1.0,
        },
    )
    with serve_in_process(config) as server:
        yield server


def url(server: RunningServer) -> str:
    return f"ws://{server.host}/v1/realtime?model=moshi-sft"


def slots_used(server: RunningServer) -> int:
    used: int = server.gateway.status()["moshi-sft"]["local"]["slots_used"]
    return used


async def until_idle(server: RunningServer) -> None:
    """Closed sessions release their slot, then their key's count, after the close handshake."""
    deadline = time.monotonic() + 10
    while slots_used(server) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)


async def next_event(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return event


async def stream_speech(ws: ClientConnection, seconds: float, seed: int) -> None:
    pcm = to_pcm16(speech_like(seconds, seed=seed))  # bytes, 2 per sample
    step = 2 * FRAME_SAMPLES
    begin = time.monotonic()
    for k, start in enumerate(range(0, len(pcm) - step + 1, step)):
        await asyncio.sleep(max(0.0, begin + k * FRAME_S - time.monotonic()))
        chunk = encode_base64(pcm[start : start + step])
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))


async def test_a_client_that_stops_reading_is_ended_and_its_slot_freed_while_another_keeps_its_audio(
    tight_server: RunningServer,
) -> None:
    """The slow client asks for its committed audio back again and again (each answer carries it, base64)
    and never reads: the kernel's socket buffers fill, then the socket's send queue, and the session ends."""
    async with websockets.connect(url(tight_server), additional_headers=AUTH) as reader:
        assert (await next_event(reader))["type"] == "session.created"
        deltas: list[float] = []

        async def read() -> None:
            async for message in reader:
                if json.loads(message)["type"] == "response.output_audio.delta":
                    deltas.append(time.monotonic())

        reading = asyncio.create_task(read())
        speaking = asyncio.create_task(stream_speech(reader, 60.0, seed=1))
        slow = await websockets.connect(url(tight_server), additional_headers=AUTH, max_queue=1)
        try:
            assert (await next_event(slow))["type"] == "session.created"
            speech = to_pcm16(speech_like(10.0, seed=2))
            await slow.send(json.dumps({"type": "input_audio_buffer.append", "audio": encode_base64(speech)}))
            await slow.send(json.dumps({"type": "input_audio_buffer.commit"}))
            while (event := await next_event(slow))["type"] != "input_audio_buffer.committed":
                pass
            item_id = event["item_id"]
            assert slots_used(tight_server) == 2
            started = time.monotonic()
            retrieve = json.dumps({"type": "conversation.item.retrieve", "item_id": item_id})
            for _ in range(40):  # 40 × 640 kB of answers; from here on the client reads nothing
                await slow.send(retrieve)
            # It keeps streaming (so the idle timeout does not end it): only not reading is wrong.
            speaking_slow = asyncio.create_task(stream_speech(slow, 60.0, seed=3))
            while slots_used(tight_server) == 2:
                assert time.monotonic() - started < 20, "still holding the slot of a client not reading"
                await asyncio.sleep(0.2)
            before = len(deltas)
            await asyncio.sleep(3.0)
            # The other session was never affected: still open, still answered with audio.
            assert not reading.done() and len(deltas) > before, (time.monotonic() - started, len(deltas))
            assert slots_used(tight_server) == 1
            speaking_slow.cancel()
        finally:
            speaking.cancel()
            reading.cancel()
            await asyncio.gather(speaking, reading, return_exceptions=True)
            slow.transport.abort()


async def test_a_client_that_only_streams_audio_and_never_reads_is_ended_by_the_keepalive(
    tight_server: RunningServer,
) -> None:
    """Moshi's answers alone take a minute to fill the socket buffers; the unanswered ping ends it first."""
    slow = await websockets.connect(url(tight_server), additional_headers=AUTH, max_queue=1)
    try:
        assert (await next_event(slow))["type"] == "session.created"
        assert slots_used(tight_server) == 1
        started = time.monotonic()
        speaking = asyncio.create_task(stream_speech(slow, 60.0, seed=4))  # never reads again
        while slots_used(tight_server) == 1:
            assert time.monotonic() - started < 10, "still holding the slot of a client not reading"
            await asyncio.sleep(0.2)
        assert time.monotonic() - started < 10
        speaking.cancel()
        await asyncio.gather(speaking, return_exceptions=True)
    finally:
        slow.transport.abort()


async def test_an_idle_client_is_told_and_closed(tight_server: RunningServer) -> None:
    async with websockets.connect(url(tight_server), additional_headers=AUTH) as ws:
        assert (await next_event(ws))["type"] == "session.created"
        started = time.monotonic()
        error = await next_event(ws, timeout=10)
        assert error["type"] == "error" and error["error"]["code"] == "idle_timeout"
        assert 2.0 <= time.monotonic() - started < 5.0
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008


async def test_one_key_holds_at_most_its_concurrent_sessions(tight_server: RunningServer) -> None:
    await until_idle(tight_server)
    first = await websockets.connect(url(tight_server), additional_headers=AUTH)
    second = await websockets.connect(url(tight_server), additional_headers=AUTH)
    try:
        for ws in (first, second):
            assert (await next_event(ws))["type"] == "session.created"
        async with websockets.connect(url(tight_server), additional_headers=AUTH) as third:
            error = await next_event(third)
            assert error["type"] == "error" and error["error"]["code"] == "too_many_sessions"
            with pytest.raises(websockets.ConnectionClosed):
                await third.recv()
            assert third.close_code == 1008
    finally:
        await first.close()
    deadline = time.monotonic() + 10
    while slots_used(tight_server) > 1:  # the first session's slot, then its key's count, are released
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    async with websockets.connect(url(tight_server), additional_headers=AUTH) as again:
        assert (await next_event(again))["type"] == "session.created"  # the key's count went down
    await second.close()
    await until_idle(tight_server)


async def test_browsers_from_other_origins_are_refused(tight_server: RunningServer) -> None:
    await until_idle(tight_server)
    async with websockets.connect(
        url(tight_server),
        additional_headers=AUTH,
        origin="https://evil.example",  # type: ignore[arg-type]
    ) as ws:
        error = await next_event(ws)
        assert error["error"]["code"] == "origin_not_allowed"
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008
    async with websockets.connect(
        url(tight_server),
        additional_headers=AUTH,
        origin="https://app.example",  # type: ignore[arg-type]
    ) as ws:
        assert (await next_event(ws))["type"] == "session.created"
