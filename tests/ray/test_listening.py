"""The listening side through the official SDK on the Ray app: server VAD commits one user turn per
festival sentence, the ASR deployment (pocketsphinx, the embedded default) transcribes each, its streaming
backend (Kyutai STT, tiny) streams text while the user speaks, and a killed ASR replica fails turns in
words, never in silence, then comes back."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import httpx
import ray
from openai import AsyncOpenAI
from ray import serve

from serve_app.constants import FRAME_SAMPLES
from tests.fixtures.speech import sentences, sentences_pcm16, word_error_rate
from tests.ray.conftest import APP, STREAMING_ASR, Cluster

TOLERANCE_MS = 150
MAX_WER = 0.15
TRANSCRIBED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"
FAILED = "conversation.item.input_audio_transcription.failed"


async def send_fixture(conn: Any, pcm: bytes) -> None:
    step = 2 * FRAME_SAMPLES
    for start in range(0, len(pcm), step):
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[start : start + step]).decode())


async def events_until(conn: Any, kinds: tuple[str, ...], count: int, timeout: float) -> list[Any]:
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while sum(e.type in kinds for e in seen) < count:
        event = await asyncio.wait_for(conn.recv(), max(0.1, deadline - time.monotonic()))
        if not event.type.startswith("response."):
            seen.append(event)
    return seen


async def transcribing_session(cluster: Cluster) -> Any:
    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=cluster.ws_base)
    return client.realtime.connect(model="moshi-base")


async def test_each_sentence_is_a_turn_at_its_boundaries_and_transcribed_under_15_percent_wer(
    cluster: Cluster,
) -> None:
    known = sentences()
    async with await transcribing_session(cluster) as conn:
        created = await asyncio.wait_for(conn.recv(), 15)
        assert created.type == "session.created"
        await conn.session.update(
            session={"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"}}}}
        )
        await send_fixture(conn, sentences_pcm16())
        events = await events_until(conn, (TRANSCRIBED, FAILED), len(known), timeout=90)
    assert not [e for e in events if e.type in (FAILED, "error")], [
        e for e in events if e.type in (FAILED, "error")
    ]
    started = [e for e in events if e.type == "input_audio_buffer.speech_started"]
    stopped = [e for e in events if e.type == "input_audio_buffer.speech_stopped"]
    committed = [e.item_id for e in events if e.type == "input_audio_buffer.committed"]
    assert len(started) == len(stopped) == len(committed) == len(known)
    for sentence, start, stop in zip(known, started, stopped, strict=True):
        assert abs(start.audio_start_ms + 300 - sentence.start_ms) <= TOLERANCE_MS, (sentence, start)
        assert abs(stop.audio_end_ms - 500 - sentence.end_ms) <= TOLERANCE_MS, (sentence, stop)
    transcripts = {e.item_id: e.transcript for e in events if e.type == TRANSCRIBED}
    hypotheses = [transcripts[item_id] for item_id in committed]
    wer = word_error_rate([s.text for s in known], hypotheses)
    print(f"pocketsphinx over the Ray app: WER {wer:.1%}: {hypotheses}")
    assert wer < MAX_WER, (wer, hypotheses)


async def test_the_streaming_asr_sends_text_while_the_user_speaks_and_completes_at_the_commit(
    cluster: Cluster,
) -> None:
    two = sentences()[:2]
    pcm = sentences_pcm16()[: (two[-1].end_ms + 200) * 48] + bytes(2 * 24_000 * 3 // 2)  # + 1.5 s silence
    arrivals: dict[str, list[float]] = {}  # event type + item id → when each arrived
    async with await transcribing_session(cluster) as conn:
        assert (await asyncio.wait_for(conn.recv(), 15)).type == "session.created"
        await conn.session.update(
            session={"type": "realtime", "audio": {"input": {"transcription": {"model": STREAMING_ASR}}}}
        )

        async def paced() -> None:  # a microphone: 80 ms of audio every 80 ms
            step, began = 2 * FRAME_SAMPLES, time.monotonic()
            for index, at in enumerate(range(0, len(pcm), step)):
                await asyncio.sleep(max(0.0, began + 0.08 * index - time.monotonic()))
                await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[at : at + step]).decode())

        sender = asyncio.create_task(paced())
        seen: list[Any] = []
        deadline = time.monotonic() + 60
        while sum(e.type in (TRANSCRIBED, FAILED) for e in seen) < len(two):
            event = await asyncio.wait_for(conn.recv(), max(0.1, deadline - time.monotonic()))
            if not event.type.startswith("response."):
                seen.append(event)
                arrivals.setdefault(f"{event.type} {getattr(event, 'item_id', '')}", []).append(
                    time.monotonic()
                )
        sender.cancel()
    assert not [e for e in seen if e.type in (FAILED, "error")], seen
    stops = [e for e in seen if e.type == "input_audio_buffer.speech_stopped"]
    assert len(stops) == len(two)
    for stop in stops:
        deltas = [e.delta for e in seen if e.type == DELTA and e.item_id == stop.item_id]
        [completed] = [e for e in seen if e.type == TRANSCRIBED and e.item_id == stop.item_id]
        assert deltas and completed.transcript == "".join(deltas).strip()
        first_delta = arrivals[f"{DELTA} {stop.item_id}"][0]
        assert first_delta < arrivals[f"input_audio_buffer.speech_stopped {stop.item_id}"][0]
        assert (
            arrivals[f"input_audio_buffer.committed {stop.item_id}"][0]
            <= arrivals[f"{TRANSCRIBED} {stop.item_id}"][0]
        )
        print(f"streamed {len(deltas)} deltas for {stop.item_id}: {completed.transcript!r}")


async def test_a_killed_asr_replica_fails_turns_in_words_and_transcription_comes_back(
    cluster: Cluster,
) -> None:
    known = sentences()
    pcm = sentences_pcm16()
    one_sentence = pcm[: (known[0].end_ms + 1200) * 48]  # 24 samples/ms × 2 bytes
    async with await transcribing_session(cluster) as conn:
        await asyncio.wait_for(conn.recv(), 15)
        await conn.session.update(
            session={"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"}}}}
        )
        actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if "RealtimeAsr" in a["name"]]
        assert actors, "no ASR replica"
        for actor in actors:
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
        await send_fixture(conn, one_sentence)
        events = await events_until(conn, (TRANSCRIBED, FAILED), 1, timeout=90)
        outcome = next(e for e in events if e.type in (TRANSCRIBED, FAILED))
        assert not [e for e in events if e.type == "error"]
        if outcome.type == FAILED:  # the kill landed before the call: a reason, in words
            assert outcome.error.message and "ASR" in outcome.error.message, outcome
    # Serve replaces the replica; a new session's turns are transcribed again.
    deadline = time.monotonic() + 60
    while serve.status().applications[APP].deployments["RealtimeAsr"].status != "HEALTHY":
        assert time.monotonic() < deadline, "the ASR deployment did not come back"
        await asyncio.sleep(0.5)
    async with await transcribing_session(cluster) as conn:
        await asyncio.wait_for(conn.recv(), 15)
        await conn.session.update(
            session={"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"}}}}
        )
        await send_fixture(conn, one_sentence)
        events = await events_until(conn, (TRANSCRIBED, FAILED), 1, timeout=90)
    outcome = next(e for e in events if e.type in (TRANSCRIBED, FAILED))
    assert outcome.type == TRANSCRIBED and word_error_rate([known[0].text], [outcome.transcript]) < 0.5


async def test_transcription_sessions_caption_the_fixture_without_a_moshi_slot(cluster: Cluster) -> None:
    """`?intent=transcription` over the Ray app: pocketsphinx (the default) captions the four sentences
    under 15 % WER while /v1/status shows the session and no Moshi slot held for it; the streaming backend
    named on the URL sends text before each turn's speech_stopped."""
    known = sentences()
    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=cluster.ws_base)

    def moshi_sessions(body: dict[str, Any]) -> int:
        models = body["models"].values()
        return sum(
            replica["sessions_from_this_ingress"] for replicas in models for replica in replicas.values()
        )

    async with httpx.AsyncClient() as http:
        before = moshi_sessions((await http.get(f"{cluster.http_base}/v1/status")).json())
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            created = await asyncio.wait_for(conn.recv(), 15)
            assert created.type == "session.created" and created.session.type == "transcription"
            await send_fixture(conn, sentences_pcm16())
            events = await events_until(conn, (TRANSCRIBED, FAILED), len(known), timeout=90)
            during = (await http.get(f"{cluster.http_base}/v1/status")).json()
    assert during["transcription"]["sessions"] == {"pocketsphinx": 1}
    assert moshi_sessions(during) == before
    assert not [e for e in events if e.type in (FAILED, "error")]
    committed = [e.item_id for e in events if e.type == "input_audio_buffer.committed"]
    transcripts = {e.item_id: e.transcript for e in events if e.type == TRANSCRIBED}
    hypotheses = [transcripts[item_id] for item_id in committed]
    wer = word_error_rate([s.text for s in known], hypotheses)
    print(f"transcription session over the Ray app: WER {wer:.1%}: {hypotheses}")
    assert len(hypotheses) == len(known) and wer <= MAX_WER, (wer, hypotheses)

    two = known[:2]
    pcm = sentences_pcm16()[: (two[-1].end_ms + 200) * 48] + bytes(2 * 24_000 * 3 // 2)
    async with client.realtime.connect(model=STREAMING_ASR, extra_query={"intent": "transcription"}) as conn:
        created = await asyncio.wait_for(conn.recv(), 15)
        assert created.session.audio.input.transcription.model == STREAMING_ASR
        step, began = 2 * FRAME_SAMPLES, time.monotonic()
        arrivals: list[tuple[Any, float]] = []

        async def paced() -> None:
            for index, at in enumerate(range(0, len(pcm), step)):
                await asyncio.sleep(max(0.0, began + 0.08 * index - time.monotonic()))
                await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[at : at + step]).decode())

        sender = asyncio.create_task(paced())
        deadline = time.monotonic() + 60
        while sum(e.type in (TRANSCRIBED, FAILED) for e, _ in arrivals) < len(two):
            event = await asyncio.wait_for(conn.recv(), max(0.1, deadline - time.monotonic()))
            arrivals.append((event, time.monotonic()))
        sender.cancel()
    assert not [e for e, _ in arrivals if e.type in (FAILED, "error")]
    stops = [(e, t) for e, t in arrivals if e.type == "input_audio_buffer.speech_stopped"]
    assert len(stops) == len(two)
    for stop, stopped_at in stops:
        deltas = [(e, t) for e, t in arrivals if e.type == DELTA and e.item_id == stop.item_id]
        assert deltas and deltas[0][1] < stopped_at, f"no text before speech_stopped of {stop.item_id}"
