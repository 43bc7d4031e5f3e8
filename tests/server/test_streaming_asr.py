"""Streaming input transcription (Kyutai STT on engine slots) on a live in-process server: text of a turn
arrives while it is spoken, `.completed` follows its commit, and every turn ends in `.completed` or
`.failed` — with server VAD, with manual commits, for a client that stops sending, and when no slot is free.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection

from serve_app.constants import FRAME_S, FRAME_SAMPLES, SAMPLE_RATE
from serve_app.protocol.codecs import encode_base64
from tests.fixtures.speech import sentences, sentences_pcm16
from tests.server.conftest import STREAMING_ASR, RunningServer

DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"
FAILED = "conversation.item.input_audio_transcription.failed"


def url(server: RunningServer) -> str:
    return f"ws://{server.host}/v1/realtime?model=moshi-sft"


async def start(ws: ClientConnection, **audio_input: Any) -> None:
    assert json.loads(await ws.recv())["type"] == "session.created"
    update = {
        "type": "realtime",
        "audio": {"input": {"transcription": {"model": STREAMING_ASR}, **audio_input}},
    }
    await ws.send(json.dumps({"type": "session.update", "session": update}))


async def send_paced(ws: ClientConnection, pcm: bytes) -> None:
    """80 ms appends on the real-time schedule, as a microphone would send them."""
    step = 2 * FRAME_SAMPLES
    began = time.monotonic()
    for index, at in enumerate(range(0, len(pcm), step)):
        await asyncio.sleep(max(0.0, began + index * FRAME_S - time.monotonic()))
        await ws.send(
            json.dumps({"type": "input_audio_buffer.append", "audio": encode_base64(pcm[at : at + step])})
        )


async def events_until(
    ws: ClientConnection, done: Any, timeout: float, sender: asyncio.Task[None] | None = None
) -> list[dict[str, Any]]:
    """Every non-response event, each stamped with its arrival, until `done(events)` holds."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while not done(seen):
            event = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
            if not event["type"].startswith("response."):
                seen.append({**event, "_at": time.monotonic()})
    finally:
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
    return seen


def of(events: list[dict[str, Any]], kind: str, item_id: str | None = None) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind and (item_id is None or e.get("item_id") == item_id)]


def silence(seconds: float) -> bytes:
    return np.zeros(int(seconds * SAMPLE_RATE), "<i2").tobytes()


async def test_text_flows_while_the_user_speaks_and_completes_at_each_commit(
    local_server: RunningServer,
) -> None:
    two = sentences()[:2]
    speech = sentences_pcm16()[: (two[-1].end_ms + 200) * SAMPLE_RATE // 1000 * 2] + silence(1.5)
    async with websockets.connect(url(local_server)) as ws:
        await start(ws)
        sender = asyncio.create_task(send_paced(ws, speech))
        events = await events_until(
            ws, lambda seen: len(of(seen, COMPLETED) + of(seen, FAILED)) >= 2, 30, sender
        )
    assert of(events, FAILED) == []
    stops = of(events, "input_audio_buffer.speech_stopped")
    assert len(stops) == 2
    for stop in stops:
        item_id = stop["item_id"]
        deltas = of(events, DELTA, item_id)
        [completed] = of(events, COMPLETED, item_id)
        [committed] = of(events, "input_audio_buffer.committed", item_id)
        assert deltas, f"no text streamed for {item_id}"
        assert deltas[0]["_at"] < stop["_at"], "the first text should arrive while the user still speaks"
        assert committed["_at"] <= completed["_at"]
        assert completed["transcript"] == "".join(d["delta"] for d in deltas).strip()
        assert completed["transcript"]


async def test_a_manual_commit_completes_even_when_the_client_stops_sending(
    local_server: RunningServer,
) -> None:
    async with websockets.connect(url(local_server)) as ws:
        await start(ws, turn_detection=None)
        await send_paced(ws, sentences_pcm16()[: 2 * SAMPLE_RATE * 2])  # 2 s, then nothing more
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        committed_at = time.monotonic()
        events = await events_until(ws, lambda seen: of(seen, COMPLETED) or of(seen, FAILED), 10)
    [completed] = of(events, COMPLETED)
    assert completed["transcript"] == "".join(d["delta"] for d in of(events, DELTA)).strip()
    # The stream is flushed with silence: its last words out after the model's delay and a short wait.
    assert completed["_at"] - committed_at < 3.0
    assert of(events, "input_audio_buffer.speech_started") == []


async def test_without_a_free_streaming_slot_each_turn_fails_in_words(local_server: RunningServer) -> None:
    holders = [await websockets.connect(url(local_server)) for _ in range(2)]
    try:
        for ws in holders:  # each holds one of the backend's 2 slots for its life
            await start(ws, turn_detection=None)
            await ws.send(
                json.dumps({"type": "input_audio_buffer.append", "audio": encode_base64(silence(0.2))})
            )
        await asyncio.sleep(1.0)
        async with websockets.connect(url(local_server)) as ws:
            await start(ws, turn_detection=None)
            await send_paced(ws, silence(0.5))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            events = await events_until(ws, lambda seen: of(seen, FAILED) or of(seen, COMPLETED), 10)
    finally:
        for ws in holders:
            await ws.close()
    [failed] = of(events, FAILED)
    assert "server_at_capacity" in failed["error"]["message"]
    assert of(events, "error") == []  # the session itself goes on
