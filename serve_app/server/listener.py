"""Server VAD in the socket shell: each session's input runs through Silero off the event loop.

One `VadWorker` per process owns the ONNX model (loaded on first use) and one thread that judges every
session's input in batches, so onnxruntime never competes with the event loop for more than that thread.
A `SessionListener` per session takes the PCM the session forwards to Moshi (never blocking the read
pump), hands whatever is pending to the worker, and applies the speech events to the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from serve_app.listening.segmenter import SpeechStarted, VadEvent, VadParams
from serve_app.listening.silero import SileroVad, VadUnavailable
from serve_app.listening.vad_stream import VadStream
from serve_app.session.config import TurnDetection
from serve_app.session.session import RealtimeSession

logger = logging.getLogger("moshi_realtime.vad")

LAG_MEMORY_S = 2.0


@dataclass
class _Request:
    stream: VadStream
    pcm: npt.NDArray[np.float32]
    future: asyncio.Future[list[VadEvent]]
    loop: asyncio.AbstractEventLoop
    queued_s: float


class VadWorker:
    """The process's VAD: one Silero model and one `vad` thread that judges every session's input.

    Each pass of the thread takes every request waiting, feeds each session's stream, and judges all their
    windows in batched inferences (`SileroVad.run`): with many sessions one call covers them all, which
    halves the model's cost per window. `lag_s` (how long the last pass's oldest request waited) tells the
    shell when the thread cannot keep up, so admission can refuse instead of letting VAD fall behind.
    """

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._model: SileroVad | None = None
        self._unavailable: str | None = None
        self._load_lock = asyncio.Lock()
        self._lag = (0.0, 0.0)
        """(how long the last pass's oldest request waited, when that pass ran)."""

    @property
    def lag_s(self) -> float:
        """The vad thread's recent lag: 0 when it has had nothing to be late with for LAG_MEMORY_S."""
        lag, at = self._lag
        return lag if time.monotonic() - at < LAG_MEMORY_S else 0.0

    async def model(self) -> SileroVad | None:
        """The shared model, loaded on first use (off the event loop); None when it cannot load."""
        async with self._load_lock:
            if self._model is None and self._unavailable is None:
                try:
                    self._model = await asyncio.to_thread(SileroVad)
                except VadUnavailable as exc:
                    self._unavailable = str(exc)
                    logger.error("server VAD unavailable: %s", exc)
        return self._model

    async def push(self, stream: VadStream, pcm: npt.NDArray[np.float32]) -> list[VadEvent]:
        """Judge `pcm` (appended to `stream`) on the vad thread; the speech events it completed."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="vad", daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[VadEvent]] = loop.create_future()
        self._requests.put(_Request(stream, pcm, future, loop, time.monotonic()))
        return await future

    def _serve(self) -> None:
        while True:
            batch = [self._requests.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._requests.get_nowait())
            now = time.monotonic()
            self._lag = (now - min(request.queued_s for request in batch), now)
            try:
                results = self._judge(batch)
            except Exception as exc:  # a broken stream fails its sessions' VAD, never the thread
                logger.exception("server VAD pass failed")
                for request in batch:
                    request.loop.call_soon_threadsafe(_settle, request.future, None, exc)
                continue
            for request, events in zip(batch, results, strict=True):
                request.loop.call_soon_threadsafe(_settle, request.future, events, None)

    def _judge(self, batch: list[_Request]) -> list[list[VadEvent]]:
        streams: dict[VadStream, None] = {}
        for request in batch:  # in arrival order: a session's chunks stay in order
            request.stream.feed(request.pcm)
            streams[request.stream] = None
        assert self._model is not None
        found = self._model.run([stream.silero for stream in streams])
        events = {stream: stream.judge(found[stream.silero]) for stream in streams}
        last = {request.stream: request for request in batch}
        # A session's events go to its last request of the pass; its earlier ones completed none.
        return [events[request.stream] if last[request.stream] is request else [] for request in batch]


def _settle(
    future: asyncio.Future[list[VadEvent]], events: list[VadEvent] | None, error: BaseException | None
) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(events or [])


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
        self._failed = False
        """VAD broke for this session: it goes on without it (the client was told)."""

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
            stream = None if self._failed else await self._stream_for(self._session.config.turn_detection)
            self._heard_samples += len(audio)
            if stream is None:
                continue
            try:
                events = await self._worker.push(stream, audio)
            except Exception:  # a VAD fault costs the session its turn detection, not the session
                logger.exception("server VAD failed", extra={"session_id": self._session.session_id})
                self._failed = True
                self._session.report("server_vad_failed")
                self._flush()
                continue
            self._apply(events)

    async def _stream_for(self, detection: TurnDetection | None) -> VadStream | None:
        if detection is None:
            self._stream = None  # turned off (null): the client commits by hand
            return None
        if self._stream is None:
            model = await self._worker.model()
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
                self._session.speech_stopped(event.audio_end_ms, speech_end_ms=event.speech_end_ms)
        if events:
            self._flush()
