"""The ingress's VAD worker: many sessions judged in batched passes get exactly their own events."""

from __future__ import annotations

import asyncio

import numpy as np

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
