"""The client's input audio: appends on one input timeline, what Moshi still owes of it, the buffer a
commit turns into a user item, server VAD's turns, and the requests for their transcription.

Moshi always listens: an accepted append goes to the model at once, whatever later happens to the buffer.
Appends are refused when they come faster than `max_append_rate` (judged before decoding) or would leave
Moshi more than `max_input_backlog_ms` behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from serve_app.constants import FRAME_SAMPLES, SAMPLE_RATE
from serve_app.protocol.audio_stream import AudioDecoder
from serve_app.protocol.codecs import AudioError, AudioFormat, pcm16_to_float
from serve_app.protocol.errors import ClientError
from serve_app.protocol.ids import new_item_id
from serve_app.session.append_rate import AppendRate
from serve_app.session.conversation import UserAudioItem
from serve_app.session.events import Append, Clear
from serve_app.session.input_buffer import InputBuffer
from serve_app.session.items import Items
from serve_app.session.settings import SessionSettings


@dataclass(frozen=True, slots=True)
class TranscriptionRequest:
    """Committed user audio for the ASR, asked for only when the client turned transcription on."""

    item_id: str
    pcm: npt.NDArray[np.float32]
    """24 kHz mono float32."""
    model: str | None = None
    """The session's transcription `model` (it picks the ASR backend)."""
    language: str | None = None
    prompt: str | None = None
    audio_start_ms: float = 0.0
    """Where the turn's audio sits on the session's input timeline (a streaming ASR cuts it there)."""
    audio_end_ms: float = 0.0
    speech_end_ms: float | None = None
    """Where server VAD heard the speech end (before its silence run); None for a manual commit. A
    streaming ASR's text is complete once it has passed this point."""


class InputAudio:
    def __init__(
        self,
        *,
        settings: SessionSettings,
        input_format: AudioFormat,
        items: Items,
        emit: Callable[[dict[str, Any]], None],
        engine_backlog: bool = True,
    ) -> None:
        """`engine_backlog`: the input is owed to Moshi, which steps it in real time, so appends that run
        `max_input_backlog_ms` ahead of its frames are refused; False for a session without Moshi (a
        transcription session: the append rate alone bounds its input)."""
        self._engine_backlog = engine_backlog
        self._settings = settings
        self._items = items
        self._emit = emit
        self._decoder = AudioDecoder(input_format)
        self._buffer = InputBuffer(max_ms=settings.max_input_buffer_ms)
        self._rate = AppendRate(settings.max_append_rate, settings.append_burst_ms)
        self._samples = 0
        """The input timeline: every sample accepted since the session opened (all of it went to Moshi)."""
        self._frames_stepped = 0
        """Engine frames Moshi stepped; each consumed FRAME_SAMPLES of the timeline."""
        self._for_engine: list[npt.NDArray[np.float32]] = []
        self._transcriptions: list[TranscriptionRequest] = []
        self._speech: tuple[str, int] | None = None
        """(item id, audio_start_ms) of the user turn server VAD hears now, before its commit."""

    @property
    def audio_ms(self) -> float:
        return self._samples * 1000 / SAMPLE_RATE

    @property
    def open_speech(self) -> tuple[str, int] | None:
        return self._speech

    def set_format(self, input_format: AudioFormat) -> None:
        self._decoder = AudioDecoder(input_format)

    def on_clock(self, now_s: float) -> None:
        self._rate.refill(now_s)

    def frame_stepped(self) -> None:
        self._frames_stepped += 1

    @property
    def audio_waiting(self) -> bool:
        """Accepted audio waits for `take_for_engine`."""
        return bool(self._for_engine)

    def take_for_engine(self) -> list[npt.NDArray[np.float32]]:
        audio, self._for_engine = self._for_engine, []
        return audio

    def take_transcriptions(self) -> list[TranscriptionRequest]:
        requests, self._transcriptions = self._transcriptions, []
        return requests

    # Client events ---------------------------------------------------------------------------------

    def append(self, event: Append) -> None:
        audio = event.audio
        chunk_ms = self._decoder.duration_ms(audio)
        if not self._rate.take(chunk_ms):
            raise ClientError(
                "input_audio_rate_exceeded",
                param="audio",
                rate=self._settings.max_append_rate,
                burst_ms=self._settings.append_burst_ms,
                chunk_ms=chunk_ms,
            )
        try:
            pcm = self._decoder.decode(audio)
        except AudioError as exc:
            raise ClientError("invalid_audio", param="audio", detail=str(exc)) from None
        if len(pcm) == 0:
            return
        backlog = self._samples - self._frames_stepped * FRAME_SAMPLES
        limit = self._settings.max_input_backlog_ms * SAMPLE_RATE // 1000
        if self._engine_backlog and backlog + len(pcm) > limit:
            raise ClientError(
                "input_audio_backlog_full",
                param="audio",
                backlog_ms=backlog * 1000 // SAMPLE_RATE,
                limit_ms=self._settings.max_input_backlog_ms,
            )
        self._samples += len(pcm)
        self._for_engine.append(pcm)
        self._buffer.append(pcm)

    def commit(self, transcription: dict[str, Any] | None) -> None:
        """input_audio_buffer.commit: the whole buffer becomes a user item (VAD's open turn's id, if any)."""
        buffered_ms = self._buffer.duration_ms
        if buffered_ms < self._settings.min_commit_ms:
            raise ClientError(
                "input_audio_buffer_commit_empty",
                min_ms=self._settings.min_commit_ms,
                buffered_ms=buffered_ms,
            )
        self._commit(self._speech[0] if self._speech else new_item_id(), transcription)
        self._speech = None

    def clear(self, event: Clear) -> None:
        self._buffer.clear()
        self._emit({"type": "input_audio_buffer.cleared"})

    # Server VAD ------------------------------------------------------------------------------------

    def speech_started(self, audio_start_ms: int) -> str:
        """The user started at `audio_start_ms` (prefix padding included): the buffer keeps audio from
        there on; returns the id the matching commit will use."""
        start = max(0, min(audio_start_ms * SAMPLE_RATE // 1000, self._samples))
        self._buffer.keep_last(self._samples - start)
        item_id = new_item_id()
        self._speech = (item_id, audio_start_ms)
        self._emit(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": audio_start_ms,
                "item_id": item_id,
            }
        )
        return item_id

    def speech_stopped(
        self, audio_end_ms: int, speech_end_ms: int | None, transcription: dict[str, Any] | None
    ) -> str:
        """speech_stopped, then the commit of the buffer up to `audio_end_ms` under the speech's item id
        (later audio waits for the next commit)."""
        item_id = self._speech[0] if self._speech else new_item_id()
        self._speech = None
        self._emit(
            {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": audio_end_ms, "item_id": item_id}
        )
        end = max(0, min(audio_end_ms * SAMPLE_RATE // 1000, self._samples))
        after = self._samples - end  # appended after the stop: not part of this speech
        samples = max(0, self._buffer.samples - after)
        self._commit(item_id, transcription, samples=samples, speech_end_ms=speech_end_ms)
        return item_id

    def _commit(
        self,
        item_id: str,
        transcription: dict[str, Any] | None,
        *,
        samples: int | None = None,
        speech_end_ms: int | None = None,
    ) -> None:
        start = self._samples - self._buffer.samples  # the buffer holds the newest input
        pcm = self._buffer.take(samples)
        item = UserAudioItem(id=item_id, pcm=pcm, duration_ms=len(pcm) * 1000 / SAMPLE_RATE)
        previous_id = self._items.add(item)
        self._emit(
            {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous_id}
        )
        self._items.announce(item, previous_id)
        if transcription is not None:
            self._transcriptions.append(
                TranscriptionRequest(
                    item_id,
                    pcm16_to_float(pcm),
                    model=_text_or_none(transcription.get("model")),
                    language=_text_or_none(transcription.get("language")),
                    prompt=_text_or_none(transcription.get("prompt")),
                    audio_start_ms=start * 1000 / SAMPLE_RATE,
                    audio_end_ms=(start + len(pcm)) * 1000 / SAMPLE_RATE,
                    speech_end_ms=speech_end_ms,
                )
            )


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
