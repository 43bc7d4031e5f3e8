"""Server VAD on a live in-process server: festival speech in, one committed user turn per sentence out."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from serve_app.constants import FRAME_SAMPLES
from serve_app.protocol.codecs import encode_base64
from tests.fixtures.speech import sentences, sentences_pcm16
from tests.server.conftest import BROKEN_ASR, RunningServer

TOLERANCE_MS = 150
VAD_EVENTS = ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped")


def url(server: RunningServer) -> str:
    return f"ws://{server.host}/v1/realtime?model=moshi-sft"


async def send_fixture(ws: ClientConnection, pcm: bytes | None = None) -> None:
    """The file (or `pcm`) in 80 ms appends, as fast as the socket takes them (VAD does not wait for
    Moshi)."""
    pcm = sentences_pcm16() if pcm is None else pcm
    step = 2 * FRAME_SAMPLES
    for start in range(0, len(pcm), step):
        audio = encode_base64(pcm[start : start + step])
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))


async def collect(
    ws: ClientConnection, until: str, count: int, timeout: float = 30, role: str | None = None
) -> list[dict[str, Any]]:
    """Events (Moshi's response events left out) until `count` of type `until` arrived (of items with
    `role`, when given: Moshi's own items are announced too)."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout

    def matches(event: dict[str, Any]) -> bool:
        return event["type"] == until and (role is None or event["item"]["role"] == role)

    while sum(matches(e) for e in seen) < count:
        event = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        if not event["type"].startswith("response."):
            seen.append(event)
    return seen


async def test_each_sentence_becomes_one_committed_user_turn_at_its_boundaries(
    local_server: RunningServer,
) -> None:
    async with websockets.connect(url(local_server)) as ws:
        created = json.loads(await ws.recv())
        detection = created["session"]["audio"]["input"]["turn_detection"]
        assert detection["type"] == "server_vad"  # the default: on without asking
        await send_fixture(ws)
        known = sentences()
        events = await collect(ws, "conversation.item.done", len(known), role="user")
    vad = [e for e in events if e["type"] in VAD_EVENTS]
    assert [e["type"] for e in vad] == list(VAD_EVENTS) * len(known)
    committed = [e for e in events if e["type"] == "input_audio_buffer.committed"]
    assert len(committed) == len(known)
    for sentence, started, stopped, commit in zip(known, vad[::2], vad[1::2], committed, strict=True):
        assert started["item_id"] == stopped["item_id"] == commit["item_id"]
        onset = started["audio_start_ms"] + detection["prefix_padding_ms"]
        end = stopped["audio_end_ms"] - detection["silence_duration_ms"]
        assert abs(onset - sentence.start_ms) <= TOLERANCE_MS, (sentence, onset)
        assert abs(end - sentence.end_ms) <= TOLERANCE_MS, (sentence, end)
    done = [e["item"] for e in events if e["type"] == "conversation.item.done"]
    done = [item for item in done if item["role"] == "user"]
    assert [item["content"][0]["type"] for item in done] == ["input_audio"] * 4


async def test_with_turn_detection_off_nothing_is_committed_until_the_client_commits(
    local_server: RunningServer,
) -> None:
    async with websockets.connect(url(local_server)) as ws:
        await ws.recv()
        off = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        await ws.send(json.dumps({"type": "session.update", "session": off}))
        await send_fixture(ws)
        await ws.send(json.dumps({"type": "input_audio_buffer.commit", "event_id": "mine"}))
        events = await collect(ws, "input_audio_buffer.committed", 1)
        assert not [e for e in events if e["type"] in VAD_EVENTS]
        assert [e["type"] for e in events if e["type"].startswith("input_audio_buffer")] == [
            "input_audio_buffer.committed"
        ]
        # clear empties the buffer: a commit right after it has nothing to commit.
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": encode_base64(bytes(9600))}))
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit", "event_id": "empty"}))
        events = await collect(ws, "error", 1)
        assert "input_audio_buffer.cleared" in [e["type"] for e in events]
        assert events[-1]["error"]["code"] == "input_audio_buffer_commit_empty"
        assert events[-1]["error"]["event_id"] == "empty"


def transcription_update(model: str) -> str:
    session = {"type": "realtime", "audio": {"input": {"transcription": {"model": model}}}}
    return json.dumps({"type": "session.update", "session": session})


async def test_each_turn_is_transcribed_and_a_failing_backend_says_why(local_server: RunningServer) -> None:
    known = sentences()
    one_turn = sentences_pcm16()[: (known[0].end_ms + 1200) * 48]
    async with websockets.connect(url(local_server)) as ws:
        await ws.recv()
        await ws.send(transcription_update("whisper-1"))  # no such backend: the default (pocketsphinx)
        await send_fixture(ws, one_turn)
        events = await collect(ws, "conversation.item.input_audio_transcription.completed", 1)
        done = events[-1]
        assert done["transcript"] == known[0].text and done["usage"]["type"] == "duration"
        deltas = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.delta"]
        assert [d["delta"] for d in deltas] == [known[0].text] and deltas[0]["item_id"] == done["item_id"]
    async with websockets.connect(url(local_server)) as ws:
        await ws.recv()
        await ws.send(transcription_update(BROKEN_ASR))
        await send_fixture(ws, one_turn)
        events = await collect(ws, "conversation.item.input_audio_transcription.failed", 1)
        failed = events[-1]
        assert failed["error"]["code"] == "transcription_failed"
        assert "transcription API failed" in failed["error"]["message"]
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))  # the session goes on
        cleared = await collect(ws, "input_audio_buffer.cleared", 1)
        assert cleared[-1]["type"] == "input_audio_buffer.cleared"
