"""Transcription sessions (`?intent=transcription`) on a live in-process server, driven by the official
openai SDK in both dialects: the committed four-sentence fixture gives four turns, each `.completed`, with
pocketsphinx's WER ≤ 15 %; a streaming backend's `.delta` events arrive before each turn's speech_stopped;
no Moshi slot is held meanwhile, even beside a speech-to-speech session; a full streaming ASR refuses the
next transcription session at once."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import httpx
import websockets
from openai import AsyncOpenAI

from serve_app.constants import FRAME_S, FRAME_SAMPLES, SAMPLE_RATE
from tests.fixtures.speech import sentences, sentences_pcm16, word_error_rate
from tests.server.conftest import STREAMING_ASR, RunningServer

DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"
FAILED = "conversation.item.input_audio_transcription.failed"
LOGPROBS = "item.input_audio_transcription.logprobs"


def chunks(pcm: bytes) -> list[str]:
    step = 2 * FRAME_SAMPLES
    return [base64.b64encode(pcm[at : at + step]).decode() for at in range(0, len(pcm), step)]


async def send_fast(conn: Any, pcm: bytes) -> None:
    """80 ms appends as fast as the socket takes them (VAD and a turn-by-turn ASR do not wait)."""
    for audio in chunks(pcm):
        await conn.input_audio_buffer.append(audio=audio)


async def send_paced(conn: Any, pcm: bytes) -> None:
    """80 ms appends on the real-time schedule, as a microphone sends them."""
    began = time.monotonic()
    for index, audio in enumerate(chunks(pcm)):
        await asyncio.sleep(max(0.0, began + index * FRAME_S - time.monotonic()))
        await conn.input_audio_buffer.append(audio=audio)


async def recv(conn: Any) -> Any:
    """The next SDK event, as the tests read it (by attribute, whatever its type)."""
    return await conn.recv()


async def events_until(conn: Any, done: Any, timeout: float) -> list[Any]:
    """SDK events, each stamped with its arrival (`_at`), until `done(events)` holds."""
    seen: list[Any] = []
    async with asyncio.timeout(timeout):
        while not done(seen):
            event = await recv(conn)
            seen.append((event, time.monotonic()))
    return seen


def of(seen: list[Any], kind: str, item_id: str | None = None) -> list[Any]:
    return [
        e for e, _ in seen if e.type == kind and (item_id is None or getattr(e, "item_id", None) == item_id)
    ]


def at(seen: list[Any], event: Any) -> float:
    return next(when for e, when in seen if e is event)


def turns_done(count: int) -> Any:
    return lambda seen: len(of(seen, COMPLETED)) + len(of(seen, FAILED)) >= count


async def moshi_slots_used(server: RunningServer) -> int:
    async with httpx.AsyncClient() as http:
        body = (await http.get(f"{server.http_base}/v1/status")).json()
    return sum(replica["slots_used"] for replicas in body["models"].values() for replica in replicas.values())


async def status(server: RunningServer) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        body: dict[str, Any] = (await http.get(f"{server.http_base}/v1/status")).json()
    return body


def assert_four_transcribed_turns(seen: list[Any]) -> None:
    known = sentences()
    completed = of(seen, COMPLETED)
    assert of(seen, FAILED) == []
    assert len(completed) == len(known)
    committed = [e.item_id for e in of(seen, "input_audio_buffer.committed")]
    assert [e.item_id for e in completed] == committed  # one per turn, in commit order
    assert [e.type for e in of(seen, "input_audio_buffer.speech_stopped")] != []
    wer = word_error_rate([s.text for s in known], [e.transcript for e in completed])
    assert wer <= 0.15, (wer, [e.transcript for e in completed])
    assert not [e for e, _ in seen if e.type.startswith("response.")]


async def test_ga_sdk_transcription_session_captions_the_fixture(local_server: RunningServer) -> None:
    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=local_server.ws_base)
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        created = await recv(conn)
        assert created.type == "session.created" and created.session.type == "transcription"
        assert created.session.audio.input.transcription.model == "pocketsphinx"  # the server's default
        await conn.session.update(session={"type": "transcription", "include": [LOGPROBS]})
        (refused,) = of(await events_until(conn, lambda seen: seen, 10), "error")
        assert refused.error.param == "session.include" and LOGPROBS in refused.error.message
        update = {
            "type": "transcription",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": {"model": "pocketsphinx", "language": "en", "prompt": ""},
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                    "noise_reduction": None,
                }
            },
        }
        await conn.session.update(session=update)
        (updated,) = of(await events_until(conn, lambda seen: seen, 10), "session.updated")
        assert updated.session.type == "transcription"
        assert updated.session.audio.input.transcription.language == "en"
        await conn.response.create()
        (refused,) = of(await events_until(conn, lambda seen: seen, 10), "error")
        assert "never creates responses" in refused.error.message
        sender = asyncio.create_task(send_fast(conn, sentences_pcm16()))
        seen = await events_until(conn, turns_done(4), 60)
        await sender
        held_by_captions = (await status(local_server))["transcription"]["sessions"]
        assert await moshi_slots_used(local_server) == 0
    assert held_by_captions == {"pocketsphinx": 1}
    assert_four_transcribed_turns(seen)


async def test_beta_sdk_transcription_session_update_and_captions(local_server: RunningServer) -> None:
    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=local_server.ws_base)
    # Beta clients must name a model; one that names no backend of this server gets the default.
    async with client.beta.realtime.connect(
        model="gpt-4o-transcribe", extra_query={"intent": "transcription"}
    ) as conn:
        created = await recv(conn)
        assert created.type == "session.created" and created.session.modalities == ["text"]
        await conn.transcription_session.update(
            session={
                "input_audio_format": "pcm16",
                "input_audio_transcription": {"model": "whisper-1", "language": "en"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
            }
        )
        seen = await events_until(conn, lambda seen: of(seen, "transcription_session.updated"), 10)
        (updated,) = of(seen, "transcription_session.updated")
        assert updated.session.input_audio_transcription.model == "whisper-1"
        sender = asyncio.create_task(send_fast(conn, sentences_pcm16()))
        seen = await events_until(conn, turns_done(4), 60)
        await sender
        assert await moshi_slots_used(local_server) == 0
    assert_four_transcribed_turns(seen)


async def test_a_manual_commit_is_transcribed_without_turn_detection(local_server: RunningServer) -> None:
    first = sentences()[0]
    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=local_server.ws_base)
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await recv(conn)
        off = {"type": "transcription", "audio": {"input": {"turn_detection": None}}}
        await conn.session.update(session=off)
        await send_fast(conn, sentences_pcm16()[: (first.end_ms + 500) * SAMPLE_RATE // 1000 * 2])
        await conn.input_audio_buffer.commit()
        seen = await events_until(conn, turns_done(1), 30)
    (completed,) = of(seen, COMPLETED)
    assert completed.transcript == first.text
    assert of(seen, "input_audio_buffer.speech_started") == []
    assert [e.item_id for e in of(seen, "input_audio_buffer.committed")] == [completed.item_id]


async def test_streaming_captions_flow_while_speaking_beside_a_speech_to_speech_session(
    local_server: RunningServer,
) -> None:
    two = sentences()[:2]
    speech = sentences_pcm16()[: (two[-1].end_ms + 200) * SAMPLE_RATE // 1000 * 2] + bytes(SAMPLE_RATE * 3)
    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=local_server.ws_base)
    async with (
        client.realtime.connect(model="moshi-sft") as talk,
        client.realtime.connect(model=STREAMING_ASR, extra_query={"intent": "transcription"}) as captions,
    ):
        assert (await recv(talk)).session.type == "realtime"
        created = await recv(captions)
        assert created.session.type == "transcription"
        assert created.session.audio.input.transcription.model == STREAMING_ASR
        talker = asyncio.create_task(send_paced(talk, speech))
        sender = asyncio.create_task(send_paced(captions, speech))
        seen = await events_until(captions, turns_done(2), 40)
        body = await status(local_server)
        await asyncio.gather(talker, sender)
    # Side by side: the speech-to-speech session holds the one Moshi slot, the captions an ASR slot.
    assert body["transcription"]["sessions"] == {STREAMING_ASR: 1}
    assert body["transcription"]["streaming_asr"][STREAMING_ASR]["local"]["slots_used"] == 1
    assert sum(r["slots_used"] for m in body["models"].values() for r in m.values()) == 1
    assert of(seen, FAILED) == []
    stops = of(seen, "input_audio_buffer.speech_stopped")
    assert len(stops) == 2
    for stop in stops:
        deltas = of(seen, DELTA, stop.item_id)
        (completed,) = of(seen, COMPLETED, stop.item_id)
        assert deltas, f"no text streamed for {stop.item_id}"
        assert at(seen, deltas[0]) < at(seen, stop), "text should arrive while the user still speaks"
        assert completed.transcript == "".join(d.delta for d in deltas).strip()


async def test_a_full_streaming_asr_refuses_the_next_transcription_session_at_once(
    local_server: RunningServer,
) -> None:
    url = f"ws://{local_server.host}/v1/realtime?model={STREAMING_ASR}&intent=transcription"
    holders = [await websockets.connect(url) for _ in range(2)]  # the backend's 2 slots
    try:
        for ws in holders:
            assert json.loads(await ws.recv())["session"]["type"] == "transcription"
        began = time.monotonic()
        async with websockets.connect(url) as ws:
            error = json.loads(await ws.recv())
            await ws.wait_closed()
            refused_in = time.monotonic() - began
            close_code = ws.close_code
    finally:
        for ws in holders:
            await ws.close()
    assert error["type"] == "error" and error["error"]["code"] == "server_at_capacity"
    assert close_code == 1013
    assert refused_in < 2.0
