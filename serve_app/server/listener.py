"""Server VAD in the socket shell: each session's input runs through Silero off the event loop.

One `VadWorker` per process owns the ONNX model (loaded on first use) and one thread that runs every
session's VAD, so onnxruntime never competes with the event loop for more than that thread. A
`SessionListener` per session takes the PCM the session forwards to Moshi (never blocking the read pump),
runs whatever is pending in one call on that thread, and applies the speech events to the session.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from serve_app.listening.segmenter import SpeechStarted, VadEvent, VadParams
from serve_app.listening.silero import SileroVad, VadUnavailable
from serve_app.listening.vad_stream import VadStream
from serve_app.session.config import TurnDetection
from serve_app.session.session import RealtimeSession

logger = logging.getLogger("moshi_realtime.vad")

T = TypeVar("T")


class VadWorker:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad")
        self._model: SileroVad | None = None
        self._unavailable: str | None = None

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def model(self) -> SileroVad | None:
        """The shared model, loaded on first use (on the worker thread); None when it cannot load."""
        if self._model is None and self._unavailable is None:
            try:
                self._model = SileroVad()
            except VadUnavailable as exc:
                self._unavailable = str(exc)
                logger.error("server VAD unavailable: %s", exc)
        return self._model

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def vad_params(detection: TurnDetection) -> VadParams:
    """semantic_vad has no parameters of its own here: it runs as server VAD with the defaults."""
    defaults = VadParams()
    return VadParams(
        threshold=detection.threshold if detection.threshold is not None else defaults.threshold,
        prefix_padding_ms=(
            detection.prefix_padding_ms
            if detection.prefix_padding_ms is not None
            else defaults.prefix_padding_ms
        ),
        silence_duration_ms=(
            detection.silence_duration_ms
            if detection.silence_duration_ms is not None
            else defaults.silence_duration_ms
        ),
    )


class SessionListener:
    def __init__(self, worker: VadWorker, session: RealtimeSession, flush: Callable[[], None]) -> None:
        self._worker = worker
        self._session = session
        self._flush = flush
        self._pending: list[npt.NDArray[np.float32]] = []
        self._wake = asyncio.Event()
        self._stream: VadStream | None = None
        self._heard_samples = 0
        """Input so far: a stream started later (turn detection switched on) starts its timeline here."""

    def hear(self, pcm: npt.NDArray[np.float32]) -> None:
        """The PCM the session just forwarded to Moshi, in order (called from the read pump)."""
        self._pending.append(pcm)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pcm, self._pending = self._pending, []
            if not pcm or self._session.closed:
                continue
            audio = np.concatenate(pcm)
            stream = await self._stream_for(self._session.config.turn_detection)
            self._heard_samples += len(audio)
            if stream is not None:
                self._apply(await self._worker.run(functools.partial(stream.push, audio)))

    async def _stream_for(self, detection: TurnDetection | None) -> VadStream | None:
        if detection is None:
            self._stream = None  # turned off (null): the client commits by hand
            return None
        if self._stream is None:
            model = await self._worker.run(self._worker.model)
            if model is None:
                return None
            self._stream = VadStream(model, vad_params(detection), offset_samples=self._heard_samples)
        else:
            self._stream.params = vad_params(detection)
        return self._stream

    def _apply(self, events: list[VadEvent]) -> None:
        for event in events:
            if self._session.closed:
                return
            if isinstance(event, SpeechStarted):
                self._session.speech_started(event.audio_start_ms)
            else:
                self._session.speech_stopped(event.audio_end_ms)
        if events:
            self._flush()
