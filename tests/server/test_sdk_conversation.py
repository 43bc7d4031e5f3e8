"""The official openai SDK, GA and beta, drives the in-process server with the real engine."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import Any

import pytest
from openai import AsyncOpenAI

from serve_app.constants import SAMPLE_RATE
from tests.fixtures.audio import speech_like, to_pcm16
from tests.server.conftest import RunningServer

CHUNK_S = 0.08


@dataclass(frozen=True)
class Names:
    audio_delta: str
    audio_done: str
    transcript_delta: str
    transcript_done: str


GA = Names(
    "response.output_audio.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.delta",
    "response.output_audio_transcript.done",
)
BETA = Names(
    "response.audio.delta",
    "response.audio.done",
    "response.audio_transcript.delta",
    "response.audio_transcript.done",
)


@dataclass
class Transcript:
    events: list[Any] = field(default_factory=list)

    def of_type(self, kind: str) -> list[Any]:
        return [e for e in self.events if e.type == kind]


async def _recv_until(conn: Any, log: Transcript, predicate: Any, timeout: float) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            event = await conn.recv()
            log.events.append(event)
            if predicate(event):
                return event


async def _stream_audio(conn: Any, seconds: float, stop: asyncio.Event, seed: int) -> None:
    """Real-time paced appends of speech-like audio, 80 ms per message."""
    pcm = speech_like(seconds, seed=seed)
    step = int(CHUNK_S * SAMPLE_RATE)
    for start in range(0, len(pcm), step):
        if stop.is_set():
            return
        chunk = base64.b64encode(to_pcm16(pcm[start : start + step])).decode()
        await conn.input_audio_buffer.append(audio=chunk)
        await asyncio.sleep(CHUNK_S)


async def _converse(conn: Any, names: Names, session_update: dict[str, Any]) -> None:
    log = Transcript()
    created = await _recv_until(conn, log, lambda e: True, 10)
    assert created.type == "session.created", created

    await conn.session.update(session=session_update)
    updated = await _recv_until(conn, log, lambda e: e.type in ("session.updated", "error"), 10)
    assert updated.type == "session.updated", updated

    # 3 s of paced speech, then more (bounded) until Moshi has finished at least one utterance.
    stop = asyncio.Event()
    # (An utterance of the random tiny model once ran through 12 s of input, ending only at its deadline.)
    sender = asyncio.create_task(_stream_audio(conn, 24.0, stop, seed=7))
    try:
        done = await _recv_until(
            conn, log, lambda e: e.type == "response.done" and e.response.status == "completed", 30
        )
    finally:
        stop.set()
        await sender
    assert not log.of_type("error"), log.of_type("error")
    response_id = done.response.id
    audio = b"".join(
        base64.b64decode(e.delta) for e in log.of_type(names.audio_delta) if e.response_id == response_id
    )
    assert len(audio) >= 2 * 1920 and len(audio) % 2 == 0
    pieces = [e.delta for e in log.of_type(names.transcript_delta) if e.response_id == response_id]
    assert pieces, "no transcript deltas in the completed response"
    (final,) = [e for e in log.of_type(names.transcript_done) if e.response_id == response_id]
    assert final.transcript == "".join(pieces)
    assert [e.response_id for e in log.of_type(names.audio_done)].count(response_id) == 1
    assert done.response.usage is not None

    # response.cancel: whatever Moshi is doing, the response it cancels ends as "cancelled".
    await conn.response.create()
    await _recv_until(
        conn,
        log,
        lambda e: (
            e.type == "response.created"
            or (e.type == "error" and e.error.code == "conversation_already_has_active_response")
        ),
        10,
    )
    await conn.response.cancel()
    cancelled = await _recv_until(conn, log, lambda e: e.type == "response.done", 10)
    assert cancelled.response.status == "cancelled"

    # A malformed event gets an error echoing its event_id; the connection stays usable.
    await conn.send({"type": "no.such.event", "event_id": "evt_malformed_1"})
    error = await _recv_until(conn, log, lambda e: e.type == "error", 10)
    assert error.error.event_id == "evt_malformed_1"
    await conn.session.update(session=session_update)
    again = await _recv_until(conn, log, lambda e: e.type in ("session.updated", "error"), 10)
    assert again.type == "session.updated"
    await conn.input_audio_buffer.append(audio=base64.b64encode(to_pcm16(speech_like(0.4, seed=3))).decode())
    await conn.input_audio_buffer.commit()
    committed = await _recv_until(
        conn, log, lambda e: e.type in ("input_audio_buffer.committed", "error"), 10
    )
    assert committed.type == "input_audio_buffer.committed"


async def test_ga_sdk_conversation(local_server: RunningServer) -> None:
    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=local_server.ws_base)
    async with client.realtime.connect(model="moshi-sft") as conn:
        await _converse(
            conn,
            GA,
            {
                "type": "realtime",
                "output_modalities": ["audio"],
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None}},
            },
        )


async def test_beta_sdk_conversation(local_server: RunningServer) -> None:
    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=local_server.ws_base)
    async with client.beta.realtime.connect(model="moshi-base") as conn:
        await _converse(
            conn,
            BETA,
            {"modalities": ["audio", "text"], "input_audio_format": "pcm16", "turn_detection": None},
        )


@pytest.mark.parametrize("model", ["moshi-sft"])
async def test_sessions_share_one_replica_concurrently(local_server: RunningServer, model: str) -> None:
    """Two sockets on one model run side by side in the batched engine, each getting its own audio."""
    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=local_server.ws_base)

    async def one(seed: int) -> int:
        async with client.realtime.connect(model=model) as conn:
            log = Transcript()
            await _recv_until(conn, log, lambda e: e.type == "session.created", 10)
            stop = asyncio.Event()
            sender = asyncio.create_task(_stream_audio(conn, 12.0, stop, seed=seed))
            try:
                await _recv_until(conn, log, lambda e: e.type == "response.done", 20)
            finally:
                stop.set()
                await sender
            return len(log.of_type(GA.audio_delta))

    counts = await asyncio.gather(one(1), one(2))
    assert all(c > 0 for c in counts)


@pytest.mark.parametrize("law", ["pcmu", "pcma"])
async def test_a_g711_session_switched_on_by_session_update_converses_through_the_ga_sdk(
    local_server: RunningServer, law: str
) -> None:
    """Input decoded before VAD and engine, output encoded: 80 ms of 8 kHz G.711 is 640 bytes a delta."""
    from serve_app.protocol.codecs import alaw_encode, float_to_pcm16, ulaw_encode
    from serve_app.protocol.resample import Downsampler

    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=local_server.ws_base)
    async with client.realtime.connect(model="moshi-sft") as conn:
        log = Transcript()
        await _recv_until(conn, log, lambda e: e.type == "session.created", 10)
        fmt = {"type": f"audio/{law}"}
        await conn.session.update(
            session={
                "type": "realtime",
                "audio": {"input": {"format": fmt, "turn_detection": None}, "output": {"format": fmt}},
            }
        )
        updated = await _recv_until(conn, log, lambda e: e.type in ("session.updated", "error"), 10)
        assert updated.type == "session.updated", updated
        assert updated.session.audio.output.format.type == f"audio/{law}"
        encode = ulaw_encode if law == "pcmu" else alaw_encode
        down = Downsampler()
        pcm = speech_like(12.0, seed=9)
        step = int(CHUNK_S * SAMPLE_RATE)
        sent = 0

        async def send() -> None:
            nonlocal sent
            for start in range(0, len(pcm), step):
                codes = encode(float_to_pcm16(down.process(pcm[start : start + step])))
                await conn.input_audio_buffer.append(audio=base64.b64encode(codes.tobytes()).decode())
                sent += 1
                await asyncio.sleep(CHUNK_S)

        sender = asyncio.create_task(send())
        try:
            done = await _recv_until(
                conn, log, lambda e: e.type == "response.done" and e.response.status == "completed", 20
            )
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        assert not log.of_type("error"), log.of_type("error")
        deltas = [
            base64.b64decode(e.delta)
            for e in log.of_type(GA.audio_delta)
            if e.response_id == done.response.id
        ]
        assert deltas and {len(d) for d in deltas} == {640}  # 8 kHz, one byte per sample
        await conn.input_audio_buffer.commit()
        committed = await _recv_until(
            conn, log, lambda e: e.type in ("input_audio_buffer.committed", "error"), 10
        )
        assert committed.type == "input_audio_buffer.committed"
