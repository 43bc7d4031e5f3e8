"""The ingress's VAD worker: many sessions judged in batched passes get exactly their own events."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_app.constants import FRAME_SAMPLES
from serve_app.listening.segmenter import VadEvent, VadParams
from serve_app.listening.silero import SileroVad
from serve_app.listening.vad_stream import VadStream
from serve_app.server.listener import VadWorker
from tests.fixtures.speech import sentences_float


def alone(pcm: np.ndarray) -> list[VadEvent]:
    stream = VadStream(SileroVad(), VadParams())
    events: list[VadEvent] = []
    for start in range(0, len(pcm), FRAME_SAMPLES):
        events += stream.push(pcm[start : start + FRAME_SAMPLES])
    return events


async def test_sessions_judged_together_get_the_events_each_gets_alone() -> None:
    worker = VadWorker()
    model = await worker.model()
    assert model is not None
    speech = sentences_float()
    # Eight sessions, each the fixture shifted by its own lead of silence: different turns at once.
    inputs = [np.concatenate([np.zeros(k * 4000, np.float32), speech]) for k in range(8)]

    async def session(pcm: np.ndarray) -> list[VadEvent]:
        stream = VadStream(model, VadParams())
        events: list[VadEvent] = []
        for start in range(0, len(pcm), FRAME_SAMPLES):
            events += await worker.push(stream, pcm[start : start + FRAME_SAMPLES])
        return events

    together = await asyncio.gather(*(session(pcm) for pcm in inputs))
    assert together == [alone(pcm) for pcm in inputs]
    assert all(len(events) == 8 for events in together)  # 4 sentences: a start and a stop each
    assert worker.lag_s < 1.0


async def test_a_vad_fault_costs_the_session_its_turn_detection_not_the_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from serve_app.protocol.dialect import Dialect
    from serve_app.server.listener import SessionListener
    from serve_app.session.session import RealtimeSession
    from serve_app.session.settings import SessionSettings

    session = RealtimeSession(
        session_id="s", model_id="m", dialect=Dialect.GA, settings=SessionSettings(), now_epoch_s=0.0
    )
    session.connect()
    session.events_to_send()
    calls = 0

    def broken(self: VadStream, pcm: np.ndarray) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("injected")

    monkeypatch.setattr(VadStream, "feed", broken)
    listener = SessionListener(VadWorker(), session, flush=lambda: None)
    running = asyncio.create_task(listener.run())
    try:
        for _ in range(3):
            listener.hear(np.zeros(FRAME_SAMPLES, np.float32))
            await asyncio.sleep(0.2)
    finally:
        running.cancel()
    errors = [json.loads(event.text)["error"] for event in session.events_to_send()]
    assert [e["code"] for e in errors] == ["server_vad_failed"] and errors[0]["type"] == "server_error"
    assert "input_audio_buffer.commit" in errors[0]["message"]
    assert calls == 1 and not session.closed  # told once, VAD off for it, the session goes on
