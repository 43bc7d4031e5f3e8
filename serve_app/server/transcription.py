"""Input transcription in the socket shell: committed user turns go to the ASR, answers go to the session.

`TranscriptionPort` is where the ASR lives (an `AsrService` on a thread in-process, the ASR deployment
over Ray); a `TranscriptionPump` per session sends its turns one at a time, in commit order, and turns
every outcome into `.completed` or `.failed`: a client that asked for transcription never gets silence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import numpy.typing as npt

from serve_app.asr.backend import TranscriptionFailed
from serve_app.asr.service import AsrService
from serve_app.session.session import RealtimeSession, TranscriptionRequest

logger = logging.getLogger("moshi_realtime.asr")

NOT_CONFIGURED = "input transcription is not configured on this server"


class TranscriptionPort(Protocol):
    async def transcribe(
        self, pcm: npt.NDArray[np.float32], *, model: str | None, language: str | None, prompt: str | None
    ) -> str:
        """Raises TranscriptionFailed with the reason the client reads."""
        ...


class LocalTranscription:
    """The ASR in this process, on its own thread (tests and the in-process server)."""

    def __init__(self, service: AsrService) -> None:
        self._service = service
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr")

    async def transcribe(
        self, pcm: npt.NDArray[np.float32], *, model: str | None, language: str | None, prompt: str | None
    ) -> str:
        def run() -> str:
            return self._service.transcribe(pcm, model=model, language=language, prompt=prompt)

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)


class TranscriptionPump:
    def __init__(
        self, port: TranscriptionPort | None, session: RealtimeSession, flush: Callable[[], None]
    ) -> None:
        self._port = port
        self._session = session
        self._flush = flush
        self._queue: asyncio.Queue[TranscriptionRequest] = asyncio.Queue()

    def submit(self, requests: list[TranscriptionRequest]) -> None:
        for request in requests:
            self._queue.put_nowait(request)

    async def run(self) -> None:
        while True:
            request = await self._queue.get()
            try:
                if self._port is None:
                    raise TranscriptionFailed(NOT_CONFIGURED)
                text = await self._port.transcribe(
                    request.pcm, model=request.model, language=request.language, prompt=request.prompt
                )
            except TranscriptionFailed as exc:
                logger.info("transcription failed: %s", exc, extra={"session_id": self._session.session_id})
                self._session.input_transcription_failed(request.item_id, str(exc))
            else:
                self._session.input_transcription_completed(request.item_id, text)
            self._flush()
