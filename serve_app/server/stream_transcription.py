"""Streaming input transcription in the socket shell: a session's own Kyutai STT stream.

When a session's transcription `model` picks a streaming ASR backend, the session holds a slot of that
backend's engine (through a `ModelGateway`: the ASR deployment over Ray, runners in-process) for as long as
it transcribes, and every PCM chunk it forwards to Moshi also goes to that slot. The slot's text is cut
into user turns by `StreamTurns`: `.delta` events flow while the user speaks (the turn's item id is known
from speech_started) and `.completed` follows the commit once the stream's text has passed the turn's end.
Every committed turn gets `.completed` or `.failed` with a reason, never silence: a stream that cannot
open, falls behind or dies fails its turns in words, and a client that stops sending audio has its last
turn flushed with silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from serve_app.asr.config import AsrBackendConfig, AsrConfig
from serve_app.asr.stream_turns import StreamTurns, TurnCompleted, TurnDelta, TurnEvent
from serve_app.constants import FRAME_SAMPLES, SAMPLE_RATE
from serve_app.server.gateway import GatewayError, ModelGateway, SlotStream
from serve_app.session.session import RealtimeSession, TranscriptionRequest

logger = logging.getLogger("moshi_realtime.asr")

FLUSH_CHECK_S = 0.2
FLUSH_AFTER_S = 0.4
"""A committed turn still waiting this long (beyond the model's delay) after the client's last audio is
completed by pushing silence: the client stopped sending, and nothing else would push its words out."""
RETRY_AFTER_S = 5.0
"""After a stream failed to open or ended, a new one is tried this much later (not on every event)."""
NO_STREAMING_ASR = "streaming transcription is not configured on this server"


class StreamingTranscription:
    def __init__(
        self,
        gateway: ModelGateway | None,
        asr: AsrConfig,
        session: RealtimeSession,
        flush: Callable[[], None],
        fallback_model: str | None = None,
    ) -> None:
        """`fallback_model`: the backend for a transcription model that names none (a transcription
        session's: the one its URL named; None: the server's default)."""
        self._fallback_model = fallback_model
        self._opened: SlotStream | None = None
        """A stream admitted with the session (a transcription session's), waiting for the pump to use."""
        self._gateway = gateway
        self._asr = asr
        self._backend = asr.streaming_backend
        self._session = session
        self._flush = flush
        self._turns: StreamTurns | None = None
        self._stream: SlotStream | None = None
        self._waiting_audio: list[npt.NDArray[np.float32]] = []
        self._want = asyncio.Event()
        self._failure: str | None = None
        self._retry_at = 0.0
        self._last_audio_at = time.monotonic()
        self._speech: tuple[str, int] | None = None
        self._log = {"session_id": session.session_id}

    # --- called by the connection (sync, on its loop) ---------------------------------------------------

    def take(self, requests: list[TranscriptionRequest]) -> list[TranscriptionRequest]:
        """Keep the committed turns this stream transcribes; return the others (for the turn-by-turn ASR)."""
        rest: list[TranscriptionRequest] = []
        for request in requests:
            backend = self.backend_for(request.model)
            if not backend.streaming:
                rest.append(dataclasses.replace(request, model=backend.id))
            elif self._turns is None:
                reason = self._failure or "the streaming ASR has no slot for this session yet"
                self._session.input_transcription_failed(request.item_id, reason)
            else:
                self._apply(
                    self._turns.committed(
                        request.item_id, request.audio_start_ms, request.audio_end_ms, request.speech_end_ms
                    )
                )
        return rest

    def backend_for(self, model: str | None) -> AsrBackendConfig:
        """The backend a transcription `model` picks: the one it names, else the fallback."""
        named = {backend.id for backend in self._asr.backends}
        return self._asr.backend_for(model if model in named else self._fallback_model)

    def adopt(self, stream: SlotStream) -> None:
        """A stream admitted with the session (a full ASR refused the session at once instead): the
        pump uses it rather than opening one."""
        self._opened = stream

    async def aclose(self) -> None:
        """The session ended: a stream admitted for it and never used is freed too."""
        stream, self._opened = self._opened, None
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.close()

    def sync(self) -> None:
        """Open the stream when the session's transcription settings ask for it, close it when not."""
        if self._wanted():
            if self._turns is None and time.monotonic() >= self._retry_at:
                self._turns = StreamTurns(self._session.input_audio_ms, text_delay_ms=0.0)
                self._want.set()
        elif self._turns is not None:
            self._turns = None
            self._want.clear()
            self._end_stream()

    async def hear(self, pcm: npt.NDArray[np.float32]) -> None:
        """Input PCM the session forwards to Moshi: the stream hears it too (a failing stream is noticed
        by the pump, which fails its turns; the session goes on)."""
        turns = self._turns
        if turns is None:
            return
        self._last_audio_at = time.monotonic()
        self._notice_speech(turns)
        turns.fed_audio(len(pcm) * 1000 / SAMPLE_RATE)
        stream = self._stream
        if stream is None:
            # Still being admitted: kept for it, all of it (dropping any would shift the stream off the input
            # timeline); the gateway's admission timeout bounds how much.
            self._waiting_audio.append(pcm)
            return
        try:
            await stream.send_audio(pcm)
        except GatewayError as exc:
            logger.info("streaming ASR audio not sent: %s", exc, extra=self._log)

    # --- the pump ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await self._want.wait()
            turns = self._turns
            if turns is None:
                self._want.clear()
                continue
            try:
                await self._serve(turns)
            except GatewayError as exc:
                self._lose(turns, f"the streaming ASR failed: {exc.code} ({exc})")
            finally:
                stream, self._stream = self._stream, None
                if stream is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(stream.close())

    async def _serve(self, turns: StreamTurns) -> None:
        if self._gateway is None or self._backend is None:
            raise GatewayError(NO_STREAMING_ASR)
        opened, self._opened = self._opened, None
        stream = opened or await self._gateway.open_session(self._backend.id, self._session.session_id)
        if self._turns is not turns:  # turned off while admitting
            await stream.close()
            return
        self._stream = stream
        turns.text_delay_ms = 1000 * stream.text_delay_s
        waiting, self._waiting_audio = self._waiting_audio, []
        for pcm in waiting:
            await stream.send_audio(pcm)
        logger.info("streaming transcription started", extra={**self._log, "asr": self._backend.id})
        flusher = asyncio.create_task(self._flush_when_idle(turns, stream))
        try:
            async for frame in stream.frames():
                self._notice_speech(turns)
                self._apply(turns.frame(frame.text))
                if self._turns is not turns:
                    return
            raise GatewayError("the streaming ASR stream ended")
        finally:
            flusher.cancel()
            with contextlib.suppress(BaseException):
                await flusher

    async def _flush_when_idle(self, turns: StreamTurns, stream: SlotStream) -> None:
        while True:
            await asyncio.sleep(FLUSH_CHECK_S)
            idle_s = time.monotonic() - self._last_audio_at
            if not turns.waiting or idle_s < stream.text_delay_s + FLUSH_AFTER_S:
                continue
            silence_ms = turns.silence_to_flush_ms()
            frames = int(np.ceil(silence_ms * SAMPLE_RATE / 1000 / FRAME_SAMPLES))
            if frames:
                turns.fed_silence(frames * FRAME_SAMPLES * 1000 / SAMPLE_RATE)
                await stream.send_audio(np.zeros(frames * FRAME_SAMPLES, np.float32))
                self._last_audio_at = time.monotonic()

    # --- inside -----------------------------------------------------------------------------------------

    def _wanted(self) -> bool:
        asked = self._session.config.transcription
        if asked is None or self._session.closed:
            return False
        model = asked.get("model")
        return self.backend_for(model if isinstance(model, str) else None).streaming

    def _notice_speech(self, turns: StreamTurns) -> None:
        speech = self._session.open_speech
        if speech is not None and speech != self._speech:
            self._apply(turns.speech_started(*speech))
        self._speech = speech

    def _closed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.info("streaming ASR slot not closed cleanly: %s", task.exception(), extra=self._log)

    def _apply(self, events: list[TurnEvent]) -> None:
        for event in events:
            if isinstance(event, TurnDelta):
                self._session.input_transcription_delta(event.item_id, event.text)
            elif isinstance(event, TurnCompleted):
                self._session.input_transcription_completed(event.item_id, event.transcript, streamed=True)
        if events:
            self._flush()

    def _lose(self, turns: StreamTurns, reason: str) -> None:
        logger.warning("streaming transcription lost: %s", reason, extra=self._log)
        for item_id in turns.fail_all():
            self._session.input_transcription_failed(item_id, reason)
        if self._turns is turns:
            self._turns = None
            self._want.clear()
            self._failure = reason
            self._retry_at = time.monotonic() + RETRY_AFTER_S
        self._flush()

    def _end_stream(self) -> None:
        stream, self._stream = self._stream, None
        self._waiting_audio = []
        for ending in (stream, self._opened):
            if ending is not None:
                task = asyncio.get_running_loop().create_task(ending.close())
                task.add_done_callback(self._closed)
        self._opened = None
