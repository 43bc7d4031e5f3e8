"""A call's outbound audio: Moshi's 24 kHz deltas, resampled to 48 kHz and paced onto the media track in
20 ms frames at real time (silence when nothing is queued).

Pacing here, not on the client, is what makes audio flushable: what is queued here has not been played,
so `output_audio_buffer.clear` and barge-in drop it. The `output_audio_buffer.*` events say what plays:
`started` when a response's first sample goes out, `stopped` once its queue has drained and the response
is done, `cleared` when a barge-in (`response.done` cancelled with reason `turn_detected`) flushes it. A
client's `output_audio_buffer.clear` is acknowledged by the session core's own `cleared`; the channel
flushes the queue when it passes through (`flush`), so the client gets exactly one.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from serve_app.constants import SAMPLE_RATE
from serve_app.pcm import float_to_pcm16

RTC_RATE = 48_000
FRAME_SAMPLES = RTC_RATE // 50
"""20 ms at 48 kHz: Opus's usual frame."""
PREBUFFER_MS = 100
"""A response starts playing once this much is queued (or it is done): Moshi's 80 ms frames arrive at real
time with jitter, and a track that started on the first one would stutter."""
MAX_QUEUED_S = 30.0
"""Bound on what waits to be played (Moshi produces at real time, so only a stalled track reaches it)."""

Emit = Callable[[str, str], None]
"""(event type, response id) of an `output_audio_buffer.*` event for the client."""


@dataclass
class _Segment:
    response_id: str
    pcm: npt.NDArray[np.int16]
    offset: int = 0


@dataclass
class _Playback:
    queue: deque[_Segment] = field(default_factory=deque)
    done: set[str] = field(default_factory=set)
    playing: str | None = None
    """The response whose audio is going out (its `started` sent, its `stopped` not yet)."""


class Upsampler48k:
    """24 kHz mono float32 → 48 kHz mono int16, stateful (libswresample keeps its filter across chunks)."""

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=RTC_RATE)
        self._pts = 0

    def process(self, pcm: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
        samples = float_to_pcm16(pcm)
        frame = av.AudioFrame.from_ndarray(samples[np.newaxis, :], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._pts += len(samples)
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.int16) if out else np.zeros(0, np.int16)


class OutputTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, emit: Emit) -> None:
        super().__init__()
        self._emit = emit
        self._upsampler = Upsampler48k()
        self._state = _Playback()
        self._start: float | None = None
        self._timestamp = 0

    @property
    def queued_samples(self) -> int:
        return sum(len(s.pcm) - s.offset for s in self._state.queue)

    def play(self, response_id: str, pcm: npt.NDArray[np.float32]) -> None:
        """Queue one delta (24 kHz float32) of `response_id`."""
        samples = self._upsampler.process(pcm)
        if len(samples) and self.queued_samples + len(samples) <= MAX_QUEUED_S * RTC_RATE:
            self._state.queue.append(_Segment(response_id, samples))

    def response_done(self, response_id: str, status: str, reason: str | None) -> None:
        state = self._state
        queued = any(s.response_id == response_id for s in state.queue)
        if state.playing != response_id and not queued:
            return  # none of its audio waits: nothing to stop or clear
        state.done.add(response_id)
        if status == "cancelled" and reason == "turn_detected":
            # Barge-in: the user talks over Moshi; what it had not said yet must not play.
            was_playing = state.playing == response_id
            state.queue = deque(s for s in state.queue if s.response_id != response_id)
            state.done.discard(response_id)
            if was_playing:
                state.playing = None
            if was_playing or queued:
                self._emit("output_audio_buffer.cleared", response_id)

    def flush(self) -> None:
        """Drop everything queued (the client asked; the session core acknowledges it)."""
        self._state.queue.clear()
        self._state.playing = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._timestamp += FRAME_SAMPLES
            wait = self._start + self._timestamp / RTC_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        frame = av.AudioFrame.from_ndarray(self._next()[np.newaxis, :], format="s16", layout="mono")
        frame.sample_rate = RTC_RATE
        frame.pts = self._timestamp
        frame.time_base = fractions.Fraction(1, RTC_RATE)
        return frame

    def _next(self) -> npt.NDArray[np.int16]:
        """The next 20 ms to play, and the `started`/`stopped` events that go with it."""
        state = self._state
        out = np.zeros(FRAME_SAMPLES, np.int16)
        if state.queue and state.playing != state.queue[0].response_id:
            head = state.queue[0].response_id
            ready = sum(len(s.pcm) - s.offset for s in state.queue if s.response_id == head)
            if ready < PREBUFFER_MS * RTC_RATE // 1000 and head not in state.done:
                return out
            if state.playing is not None:  # the previous response's audio ran out: it has stopped
                self._emit("output_audio_buffer.stopped", state.playing)
            state.playing = head
            self._emit("output_audio_buffer.started", head)
        filled = 0
        while state.queue and filled < FRAME_SAMPLES and state.queue[0].response_id == state.playing:
            segment = state.queue[0]
            take = min(FRAME_SAMPLES - filled, len(segment.pcm) - segment.offset)
            out[filled : filled + take] = segment.pcm[segment.offset : segment.offset + take]
            filled += take
            segment.offset += take
            if segment.offset == len(segment.pcm):
                state.queue.popleft()
        playing = state.playing
        if (
            playing is not None
            and playing in state.done
            and not any(s.response_id == playing for s in state.queue)
        ):
            state.playing = None
            state.done.discard(playing)
            self._emit("output_audio_buffer.stopped", playing)
        return out
