"""A call's inbound audio: the remote track's decoded Opus frames (48 kHz, usually stereo) → 24 kHz mono,
handed to the session as `input_audio_buffer.append` events in its current input format, so track audio
takes the same path as a WebSocket's (rate and backlog limits, server VAD, Moshi)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from serve_app.constants import FRAME_SAMPLES, SAMPLE_RATE
from serve_app.pcm import pcm16_to_float
from serve_app.protocol.audio_stream import AudioEncoder
from serve_app.protocol.codecs import AudioFormat

CHUNK_SAMPLES = FRAME_SAMPLES
"""One append per Moshi frame (80 ms), as the WebSocket clients send."""


class TrackInput:
    def __init__(self, deliver: Callable[[str], None], input_format: Callable[[], AudioFormat]) -> None:
        """`deliver`: takes each append event's JSON text. `input_format`: the session's input format now
        (a session.update may change it)."""
        self._deliver = deliver
        self._input_format = input_format
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._encoder: AudioEncoder | None = None
        self._pending = np.zeros(0, np.int16)

    async def run(self, track: MediaStreamTrack) -> None:
        """Until the track ends."""
        async for frame in audio_frames(track):
            self.hear(frame)

    def hear(self, frame: av.AudioFrame) -> None:
        pieces = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        self._pending = np.concatenate([self._pending, *pieces]).astype(np.int16)
        while len(self._pending) >= CHUNK_SAMPLES:
            chunk, self._pending = self._pending[:CHUNK_SAMPLES], self._pending[CHUNK_SAMPLES:]
            fmt = self._input_format()
            if self._encoder is None or self._encoder.format is not fmt:
                self._encoder = AudioEncoder(fmt)
            audio = self._encoder.encode(pcm16_to_float(chunk))
            self._deliver(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))


async def audio_frames(track: MediaStreamTrack) -> AsyncIterator[av.AudioFrame]:
    """A remote audio track's frames, until it ends."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        assert isinstance(frame, av.AudioFrame)
        yield frame
