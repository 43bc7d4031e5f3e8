"""The realtime session core, sans I/O: feed it client messages, engine frames and the clock; collect
server events (`data_to_send`) and PCM for Moshi (`audio_for_engine`).

Like python-websockets' protocol.py, it owns no socket, task or timer, so the same object runs under the
Starlette shell and in millisecond tests. Moshi is full-duplex: it hears every appended sample and speaks
when it wants; each utterance becomes one response (see response.py), and a client's response.create
waits for the next one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from serve_app.constants import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE
from serve_app.engine.port import EngineFrame
from serve_app.protocol.audio_stream import AudioDecoder, AudioEncoder
from serve_app.protocol.client_events import parse_client_event
from serve_app.protocol.codecs import AudioError, AudioFormat, decode_base64, pcm16_to_float
from serve_app.protocol.dialect import Dialect
from serve_app.protocol.errors import ERRORS, ClientError, error_payload, render
from serve_app.protocol.ids import new_conversation_id, new_item_id, new_response_id
from serve_app.session.append_rate import AppendRate
from serve_app.session.config import SessionConfig
from serve_app.session.config_wire import (
    apply_session_update,
    borrowed_response_params,
    format_from_ga,
    session_object,
)
from serve_app.session.conversation import AssistantItem, ClientItem, Conversation, Item, UserAudioItem
from serve_app.session.input_buffer import InputBuffer
from serve_app.session.outbox import Outbox, OutgoingEvent
from serve_app.session.response import FinalStatus, Reason, Response, ResponseOptions
from serve_app.session.settings import SessionSettings
from serve_app.session.state import ResponseState, SessionState, StateError, require
from serve_app.session.utterance import Utterance, UtteranceEnd

logger = logging.getLogger(__name__)

_GA_FORMATS = {
    "audio/pcm": AudioFormat.PCM16,
    "audio/pcmu": AudioFormat.G711_ULAW,
    "audio/pcma": AudioFormat.G711_ALAW,
}


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


class RealtimeSession:
    def __init__(
        self,
        *,
        session_id: str,
        model_id: str,
        dialect: Dialect,
        settings: SessionSettings,
        now_epoch_s: float | None = None,
    ) -> None:
        self.session_id = session_id
        self.model_id = model_id
        self.dialect = dialect
        self.settings = settings
        self._state = SessionState.CONNECTING
        self._config = SessionConfig.initial(settings)
        self._expires_at = int((time.time() if now_epoch_s is None else now_epoch_s) + settings.max_session_s)
        self._opened_s: float | None = None
        """Monotonic time of the first clock tick: the session's duration counts from it."""
        self._heard_s: float | None = None
        """Monotonic time of the last clock tick that followed a client message (idle timeout)."""
        self._heard = False
        self._failure: str | None = None
        self._outbox = Outbox(dialect)
        self._engine_audio: list[npt.NDArray[np.float32]] = []
        # Input forwarded to Moshi vs frames it has stepped: the difference is the backlog it still owes.
        self._forwarded_samples = 0
        self._frames_received = 0
        self._transcriptions: list[TranscriptionRequest] = []
        self._decoder = AudioDecoder(self._config.input_format)
        self._buffer = InputBuffer(max_ms=settings.max_input_buffer_ms)
        self._append_rate = AppendRate(settings.max_append_rate, settings.append_burst_ms)
        self._input_samples = 0
        self._conversation = Conversation(new_conversation_id(), retained_audio_ms=settings.retained_audio_ms)
        self._response: Response | None = None
        """The active response (waiting or streaming); None when there is none."""
        self._last_response_id: str | None = None
        self._utterance: Utterance | None = None
        self._muted = False
        """The current utterance's response was cancelled: drop its frames until it ends."""
        self._audio_sent = False
        self._vad_item_id: str | None = None
        self._vad_start_ms: int | None = None
        self._silence_frames = math.ceil(settings.utterance_silence_ms / FRAME_MS)
        self._max_frames = math.ceil(settings.max_utterance_ms / FRAME_MS)
        self._wait_frames = math.ceil(settings.response_wait_ms / FRAME_MS)
        self._log = {"session_id": session_id, "model": model_id, "dialect": dialect.value}
        self._handlers: dict[str, Callable[[Any], None]] = {
            "session.update": self._on_session_update,
            "transcription_session.update": self._on_transcription_session_update,
            "input_audio_buffer.append": self._on_append,
            "input_audio_buffer.commit": self._on_commit,
            "input_audio_buffer.clear": self._on_clear,
            "conversation.item.create": self._on_item_create,
            "conversation.item.retrieve": self._on_item_retrieve,
            "conversation.item.delete": self._on_item_delete,
            "conversation.item.truncate": self._on_item_truncate,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
            "output_audio_buffer.clear": self._on_output_audio_clear,
        }

    # Introspection -----------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is SessionState.CLOSED

    @property
    def config(self) -> SessionConfig:
        return self._config

    @property
    def conversation(self) -> Conversation:
        return self._conversation

    @property
    def failure(self) -> str | None:
        """The error code the session ended with (`fail`), None while open or after a plain close."""
        return self._failure

    @property
    def active_response_id(self) -> str | None:
        return None if self._response is None else self._response.id

    @property
    def input_audio_ms(self) -> float:
        """All input audio received since the session started: the clock VAD events are stamped in."""
        return self._input_samples * 1000 / SAMPLE_RATE

    # Inputs -------------------------------------------------------------------------------------

    def connect(self) -> None:
        require("connect", self._state, SessionState.CONNECTING)
        self._state = SessionState.OPEN
        self._emit({"type": "session.created", "session": self._session_object()})
        if self.dialect is Dialect.BETA:
            conversation = {"id": self._conversation.id, "object": "realtime.conversation"}
            self._emit({"type": "conversation.created", "conversation": conversation})
        logger.info("realtime session open", extra=self._log)

    def receive_client_text(self, data: str | bytes) -> None:
        """Handle one client WebSocket message. Whatever is wrong with it becomes exactly one `error`."""
        if self.closed:
            return
        require("receive a client event", self._state, SessionState.OPEN)
        self._heard = True
        if len(data) > self.settings.max_message_bytes:
            # Not even parsed (that is what the limit saves): no event_id to echo.
            self._client_error(
                ClientError("message_too_large", size=len(data), limit=self.settings.max_message_bytes)
            )
            return
        event_id: str | None = None
        try:
            event = parse_client_event(self.dialect, data)
            event_id = getattr(event, "event_id", None)
            self._handlers[str(getattr(event, "type", ""))](event)
        except ClientError as exc:
            exc.event_id = exc.event_id if exc.event_id is not None else event_id
            self._client_error(exc)
        except StateError as exc:
            error = ClientError("invalid_state", detail=str(exc))
            error.event_id = event_id
            self._client_error(error)

    def receive_engine_frame(self, frame: EngineFrame) -> None:
        """One 80 ms step of Moshi. Audio reaches the client only inside a response."""
        if self.closed:
            return
        require("receive an engine frame", self._state, SessionState.OPEN)
        if len(frame.pcm) != FRAME_SAMPLES:
            raise ValueError(f"an engine frame has {FRAME_SAMPLES} samples, got {len(frame.pcm)}")
        self._frames_received += 1
        if self._response is not None:
            self._response.fresh = True
        if self._utterance is None:
            if not frame.speaking:
                self._count_waiting_frame()
                return
            self._utterance = Utterance(silence_frames=self._silence_frames, max_frames=self._max_frames)
            self._bind_utterance()
        end = self._utterance.add(frame.speaking)
        if self._muted:
            self._count_waiting_frame()
        else:
            response = self._streaming_response()
            response.add_frame(frame)
            self._audio_sent |= response.options.audio_output
        if end is not None:
            self._utterance = None
            if self._muted:
                self._muted = False
            else:
                response = self._streaming_response()
                if end is UtteranceEnd.SILENCE:
                    self._finish(response, "completed")
                else:
                    self._finish(response, "incomplete", reason="max_output_tokens")

    def advance_clock(self, now_s: float) -> None:
        """Monotonic seconds, every few hundred ms. Deadlines start at the first tick that sees them, so
        they never fire early; frames count too (response_wait_ms), whichever runs out first."""
        if self._state is not SessionState.OPEN:
            return
        if self._ended_by_limits(now_s):
            return
        self._append_rate.refill(now_s)
        response = self._response
        if response is None:
            return
        if response.clock_mark_s is None:
            response.clock_mark_s, response.fresh = now_s, False
            return
        elapsed_ms = (now_s - response.clock_mark_s) * 1000
        if response.state is ResponseState.WAITING:
            if elapsed_ms >= self.settings.response_wait_ms:
                self._end_unanswered(response)
        elif response.fresh:
            response.clock_mark_s, response.fresh = now_s, False
        elif elapsed_ms >= self.settings.response_stall_ms:
            # Moshi steps only on input audio: without frames its utterance cannot end by silence.
            logger.info(
                "response stalled without engine frames", extra={**self._log, "response_id": response.id}
            )
            self._utterance = None
            self._finish(response, "incomplete")

    def _ended_by_limits(self, now_s: float) -> bool:
        """Session duration and client idleness, judged on the clock's ticks."""
        if self._opened_s is None:
            self._opened_s = now_s
        if self._heard or self._heard_s is None:
            self._heard_s, self._heard = now_s, False
        if now_s - self._opened_s >= self.settings.max_session_s:
            self.fail("session_expired", limit_s=self.settings.max_session_s)
            return True
        idle = self.settings.idle_timeout_s
        if idle is not None and now_s - self._heard_s >= idle:
            self.fail("idle_timeout", limit_s=idle)
            return True
        return False

    def fail(self, code: str, message: str | None = None, **fields: Any) -> None:
        """Queue a server-side `error` (session_lost, server_at_capacity, ...) and close the session.
        Legal before connect(): a rejected socket gets the error without session.created."""
        if self.closed:
            return
        self._failure = code
        error_type, text = render(code, **fields) if message is None else (ERRORS[code].type, message)
        if self._response is not None:
            # Every response.created gets its response.done, even when the session ends under it.
            self._finish(self._response, "failed", error={"type": error_type, "code": code})
        self._emit(error_payload(code, text, error_type=error_type))
        self._state = SessionState.CLOSED
        logger.info("realtime session failed: %s", code, extra={**self._log, "code": code})

    def close(self) -> None:
        """The socket went away; ignore whatever still arrives."""
        self._state = SessionState.CLOSED

    # Outputs ------------------------------------------------------------------------------------

    def data_to_send(self) -> list[str]:
        """JSON text frames in order, one event each; drains."""
        return self._outbox.drain()

    def events_to_send(self) -> list[OutgoingEvent]:
        """The same frames as `data_to_send`, each with its GA type and error code; drains."""
        return self._outbox.drain_events()

    def audio_for_engine(self) -> list[npt.NDArray[np.float32]]:
        """Decoded input PCM (24 kHz mono float32) for the model slot; drains."""
        audio, self._engine_audio = self._engine_audio, []
        return audio

    def transcription_requests(self) -> list[TranscriptionRequest]:
        """Committed user audio to transcribe (only while session transcription is on); drains."""
        requests, self._transcriptions = self._transcriptions, []
        return requests

    # Hooks for collaborators (ASR, VAD) ----------------------------------------------------------

    @property
    def open_speech(self) -> tuple[str, int] | None:
        """(item id, audio_start_ms) of the user turn server VAD hears now, before its commit."""
        if self._vad_item_id is None or self._vad_start_ms is None:
            return None
        return self._vad_item_id, self._vad_start_ms

    def input_transcription_delta(self, item_id: str, delta: str) -> None:
        """A streaming ASR's next text for a user turn: committed, or still being spoken (its id came
        with speech_started)."""
        if self.closed or not delta:
            return
        if item_id != self._vad_item_id and self._user_item(item_id) is None:
            return
        self._emit(
            {
                "type": "conversation.item.input_audio_transcription.delta",
                "item_id": item_id,
                "content_index": 0,
                "delta": delta,
            }
        )

    def input_transcription_completed(self, item_id: str, transcript: str, *, streamed: bool = False) -> None:
        """The ASR's text for a committed user item: sets its transcript and tells the client (in one
        delta first, unless a streaming ASR `streamed` it already)."""
        item = self._user_item(item_id)
        if item is None:
            return
        item.transcript = transcript
        where = {"item_id": item_id, "content_index": 0}
        if not streamed:
            self._emit(
                {"type": "conversation.item.input_audio_transcription.delta", **where, "delta": transcript}
            )
        usage = {"type": "duration", "seconds": round(item.duration_ms / 1000, 3)}
        self._emit(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                **where,
                "transcript": transcript,
                "usage": usage,
            }
        )

    def input_transcription_failed(self, item_id: str, message: str) -> None:
        if self._user_item(item_id) is None:
            return
        error = {"type": "server_error", "code": "transcription_failed", "message": message, "param": None}
        self._emit(
            {
                "type": "conversation.item.input_audio_transcription.failed",
                "item_id": item_id,
                "content_index": 0,
                "error": error,
            }
        )

    def speech_started(self, audio_start_ms: int) -> str:
        """Server VAD heard the user start (ms on the input timeline, prefix padding included): the buffer
        keeps audio from there on, a response Moshi is speaking is cancelled when `interrupt_response`
        asks for it (Moshi hears the user anyway), and the returned item id is the one the matching
        commit will use."""
        if self.closed:
            return ""
        start = max(0, min(audio_start_ms * SAMPLE_RATE // 1000, self._input_samples))
        self._buffer.keep_last(self._input_samples - start)
        self._vad_item_id = new_item_id()
        self._vad_start_ms = audio_start_ms
        self._emit(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": audio_start_ms,
                "item_id": self._vad_item_id,
            }
        )
        detection = self._config.turn_detection
        response = self._response
        streaming = response is not None and response.state is ResponseState.STREAMING
        if detection is not None and detection.interrupt_response and response is not None and streaming:
            self._finish(response, "cancelled", reason="turn_detected")
            self._muted = self._utterance is not None  # the rest of Moshi's utterance stays off the wire
        return self._vad_item_id

    def speech_stopped(self, audio_end_ms: int, speech_end_ms: int | None = None) -> str:
        """Server VAD heard the user stop (silence duration included; the speech itself ended at
        `speech_end_ms`): speech_stopped, then the commit of the buffer up to that point under the speech's
        item id (later audio waits for the next commit)."""
        if self.closed:
            return ""
        item_id = self._vad_item_id or new_item_id()
        self._vad_item_id = self._vad_start_ms = None
        self._emit(
            {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": audio_end_ms, "item_id": item_id}
        )
        end = max(0, min(audio_end_ms * SAMPLE_RATE // 1000, self._input_samples))
        after = self._input_samples - end  # appended after the stop: not part of this speech
        self._commit(item_id, samples=max(0, self._buffer.samples - after), speech_end_ms=speech_end_ms)
        return item_id

    # Client events ------------------------------------------------------------------------------

    def _on_session_update(self, event: Any) -> None:
        updated = apply_session_update(self.dialect, self._config, event.session)
        if self._audio_sent and updated.voice != self._config.voice:
            param = "session.audio.output.voice" if self.dialect is Dialect.GA else "session.voice"
            raise ClientError(
                "invalid_session_update",
                param=param,
                detail="Cannot update a conversation's voice if assistant audio is present.",
            )
        if updated.input_format is not self._config.input_format:
            self._decoder = AudioDecoder(updated.input_format)
        self._config = updated
        self._emit({"type": "session.updated", "session": self._session_object()})

    def _on_transcription_session_update(self, event: Any) -> None:
        del event
        raise ClientError(
            "invalid_session_update",
            param="type",
            detail="Transcription sessions are not supported by this server; use session.update.",
        )

    def _on_append(self, event: Any) -> None:
        chunk_ms = self._decoder.duration_ms(event.audio)
        if not self._append_rate.take(chunk_ms):
            raise ClientError(
                "input_audio_rate_exceeded",
                param="audio",
                rate=self.settings.max_append_rate,
                burst_ms=self.settings.append_burst_ms,
                chunk_ms=chunk_ms,
            )
        try:
            pcm = self._decoder.decode(event.audio)
        except AudioError as exc:
            raise ClientError("invalid_audio", param="audio", detail=str(exc)) from None
        if len(pcm) == 0:
            return
        backlog = self._forwarded_samples - self._frames_received * FRAME_SAMPLES
        limit = self.settings.max_input_backlog_ms * SAMPLE_RATE // 1000
        if backlog + len(pcm) > limit:
            raise ClientError(
                "input_audio_backlog_full",
                param="audio",
                backlog_ms=backlog * 1000 // SAMPLE_RATE,
                limit_ms=self.settings.max_input_backlog_ms,
            )
        # Moshi always listens: the audio goes to the model now, whatever later happens to the buffer.
        self._forwarded_samples += len(pcm)
        self._engine_audio.append(pcm)
        self._buffer.append(pcm)
        self._input_samples += len(pcm)

    def _on_commit(self, event: Any) -> None:
        del event
        buffered_ms = self._buffer.duration_ms
        if buffered_ms < self.settings.min_commit_ms:
            raise ClientError(
                "input_audio_buffer_commit_empty", min_ms=self.settings.min_commit_ms, buffered_ms=buffered_ms
            )
        self._commit(self._vad_item_id or new_item_id())
        self._vad_item_id = self._vad_start_ms = None

    def _on_clear(self, event: Any) -> None:
        del event
        self._buffer.clear()
        self._emit({"type": "input_audio_buffer.cleared"})

    def _on_item_create(self, event: Any) -> None:
        given: dict[str, Any] = event.item.model_dump(mode="json", exclude_unset=True)
        for index, part in enumerate(given.get("content") or []):
            if isinstance(part.get("audio"), str):
                try:
                    decode_base64(part["audio"])
                except AudioError as exc:
                    raise ClientError(
                        "invalid_audio", param=f"item.content[{index}].audio", detail=str(exc)
                    ) from None
        item = ClientItem.from_client(given.get("id") or new_item_id(), given)
        previous_id = self._conversation.add(item, event.previous_item_id)
        self._announce_item(item, previous_id)

    def _on_item_retrieve(self, event: Any) -> None:
        item = self._conversation.get(event.item_id)
        self._emit({"type": "conversation.item.retrieved", "item": self._retrieved(item)})

    def _on_item_delete(self, event: Any) -> None:
        item = self._conversation.get(event.item_id)
        if self._response is not None and self._response.item is item:
            raise ClientError("item_in_progress", param="item_id", item_id=item.id)
        self._conversation.delete(item.id)
        self._emit({"type": "conversation.item.deleted", "item_id": item.id})

    def _on_item_truncate(self, event: Any) -> None:
        item = self._conversation.get(event.item_id)
        if not isinstance(item, AssistantItem) or not item.audio_output:
            raise ClientError("unsupported_content_type", param="item_id")
        if event.content_index != 0:
            raise ClientError(
                "content_index_out_of_range",
                param="content_index",
                item_id=item.id,
                content_index=event.content_index,
            )
        if not 0 <= event.audio_end_ms <= item.audio_ms:
            raise ClientError(
                "audio_end_ms_out_of_range",
                param="audio_end_ms",
                duration_ms=item.audio_ms,
                audio_end_ms=event.audio_end_ms,
            )
        item.truncate(event.audio_end_ms)
        if self._response is not None and self._response.item is item:
            self._cancel(self._response)  # the client stopped playing it: stop saying it
        self._emit(
            {
                "type": "conversation.item.truncated",
                "item_id": item.id,
                "content_index": event.content_index,
                "audio_end_ms": event.audio_end_ms,
            }
        )

    def _on_response_create(self, event: Any) -> None:
        if self._response is not None:
            raise ClientError("conversation_already_has_active_response", response_id=self._response.id)
        response = self._new_response(self._response_options(event.response))
        response.announce()
        logger.info("response waiting for Moshi to speak", extra={**self._log, "response_id": response.id})

    def _on_response_cancel(self, event: Any) -> None:
        response = self._response
        if response is None or (event.response_id and event.response_id != response.id):
            raise ClientError(
                "response_cancel_not_active", param="response_id" if event.response_id else None
            )
        self._cancel(response)

    def _on_output_audio_clear(self, event: Any) -> None:
        del event
        response = self._response
        if response is not None:
            self._cancel(response)
            cleared_id = response.id
        elif self._last_response_id is not None:
            cleared_id = self._last_response_id
        else:
            raise ClientError("response_cancel_not_active")
        self._emit({"type": "output_audio_buffer.cleared", "response_id": cleared_id})

    # Responses ----------------------------------------------------------------------------------

    def _response_options(self, params: BaseModel | None) -> ResponseOptions:
        """Session defaults, overridden by what response.create asked for where Moshi can honour it (in
        either dialect's shape: the other dialect's fields are validated by its own SDK type)."""
        config = self._config
        sources = [] if params is None else [params, borrowed_response_params(self.dialect, params)]

        def given(name: str) -> Any:
            for source in sources:
                if (
                    source is not None
                    and name in type(source).model_fields
                    and name in source.model_fields_set
                ):
                    return getattr(source, name)
            return None

        modalities = given("modalities")
        if modalities is None:
            modalities = given("output_modalities")
        output_format, voice = config.output_format, config.voice
        if given("output_audio_format") is not None:
            output_format = AudioFormat(given("output_audio_format"))
        if given("voice") is not None:
            voice = given("voice")
        audio_output = getattr(given("audio"), "output", None)
        if audio_output is not None and audio_output.format is not None:
            output_format = format_from_ga(audio_output.format, param="response.audio.output.format")
        if audio_output is not None and audio_output.voice is not None:
            voice = audio_output.voice
        max_tokens = given("max_output_tokens") or given("max_response_output_tokens")
        temperature = given("temperature")
        return ResponseOptions(
            conversation_id=self._conversation.id,
            audio_output=config.audio_output if modalities is None else "audio" in modalities,
            output_format=output_format,
            voice=voice,
            temperature=config.temperature if temperature is None else temperature,
            max_output_tokens=config.max_output_tokens if max_tokens is None else max_tokens,
            metadata=given("metadata"),
        )

    def _new_response(self, options: ResponseOptions) -> Response:
        self._response = Response(
            response_id=new_response_id(), dialect=self.dialect, options=options, emit=self._emit
        )
        return self._response

    def _bind_utterance(self) -> None:
        """Moshi started speaking: the waiting response takes the utterance, or a new one is opened."""
        response = self._response
        if response is None:
            response = self._new_response(self._response_options(None))
            response.announce()
        item = AssistantItem(id=new_item_id(), audio_output=response.options.audio_output)
        previous_id = self._conversation.add(item)
        response.open_item(item, previous_id)
        self._trim_conversation()
        logger.info(
            "Moshi started speaking", extra={**self._log, "response_id": response.id, "item_id": item.id}
        )

    def _streaming_response(self) -> Response:
        response = self._response
        if response is None or response.state is not ResponseState.STREAMING:
            raise StateError("stream a frame", ResponseState.STREAMING, ResponseState.DONE)
        return response

    def _count_waiting_frame(self) -> None:
        response = self._response
        if response is not None and response.state is ResponseState.WAITING:
            response.waited_frames += 1
            if response.waited_frames >= self._wait_frames:
                self._end_unanswered(response)

    def _end_unanswered(self, response: Response) -> None:
        # Moshi chose not to speak. "completed" with no output is what the SDK types allow for that:
        # "incomplete" would need a reason, and none of the four fits.
        logger.info(
            "Moshi did not speak; response ends empty", extra={**self._log, "response_id": response.id}
        )
        self._finish(response, "completed")

    def _cancel(self, response: Response) -> None:
        was_streaming = response.state is ResponseState.STREAMING
        self._finish(response, "cancelled", reason="client_cancelled")
        if was_streaming:
            # Moshi's current utterance goes on in the model; keep it off the wire until it ends.
            self._muted = self._utterance is not None

    def _finish(
        self,
        response: Response,
        status: FinalStatus,
        *,
        reason: Reason | None = None,
        error: dict[str, str] | None = None,
    ) -> None:
        previous_id = None
        if response.item is not None and response.item.id in self._conversation:
            previous_id = self._conversation.previous_id(response.item.id)
        response.finish(status, reason=reason, previous_item_id=previous_id, error=error)
        self._response = None
        self._last_response_id = response.id
        self._conversation.audio_added()
        logger.info(
            "response done",
            extra={**self._log, "response_id": response.id, "status": status, "frames": response.frames},
        )

    # Items --------------------------------------------------------------------------------------

    def _commit(self, item_id: str, samples: int | None = None, speech_end_ms: int | None = None) -> None:
        start = self._input_samples - self._buffer.samples  # the buffer holds the newest input
        pcm = self._buffer.take(samples)
        item = UserAudioItem(id=item_id, pcm=pcm, duration_ms=len(pcm) * 1000 / SAMPLE_RATE)
        previous_id = self._conversation.add(item)
        self._emit(
            {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous_id}
        )
        self._announce_item(item, previous_id)
        asked = self._config.transcription
        if asked is not None:
            self._transcriptions.append(
                TranscriptionRequest(
                    item_id,
                    pcm16_to_float(pcm),
                    model=_text_or_none(asked.get("model")),
                    language=_text_or_none(asked.get("language")),
                    prompt=_text_or_none(asked.get("prompt")),
                    audio_start_ms=start * 1000 / SAMPLE_RATE,
                    audio_end_ms=(start + len(pcm)) * 1000 / SAMPLE_RATE,
                    speech_end_ms=speech_end_ms,
                )
            )

    def _announce_item(self, item: Item, previous_id: str | None) -> None:
        wire = item.to_wire(self.dialect)
        if self.dialect is Dialect.GA:
            self._emit({"type": "conversation.item.added", "previous_item_id": previous_id, "item": wire})
            self._emit({"type": "conversation.item.done", "previous_item_id": previous_id, "item": wire})
        else:
            self._emit({"type": "conversation.item.created", "previous_item_id": previous_id, "item": wire})
        self._trim_conversation()

    def _trim_conversation(self) -> None:
        """Keep at most `max_items`: the oldest go first, never the item a response is streaming into."""
        keep = self._response.item if self._response is not None else None
        for item_id in self._conversation.trim(self.settings.max_items, keep=keep):
            self._emit({"type": "conversation.item.deleted", "item_id": item_id})

    def _retrieved(self, item: Item) -> dict[str, Any]:
        """The item with its audio (in the session's wire format), as conversation.item.retrieved shows it."""
        if isinstance(item, ClientItem):
            return item.wire
        pcm = item.pcm
        if pcm is None or len(pcm) == 0 or (isinstance(item, AssistantItem) and not item.audio_output):
            return item.to_wire(self.dialect)
        audio_format = (
            self._config.input_format if isinstance(item, UserAudioItem) else self._config.output_format
        )
        return item.to_wire(self.dialect, audio=AudioEncoder(audio_format).encode(pcm16_to_float(pcm)))

    def _user_item(self, item_id: str) -> UserAudioItem | None:
        item = self._conversation.get(item_id) if item_id in self._conversation else None
        if not isinstance(item, UserAudioItem):
            logger.info("transcript for an item that is gone", extra={**self._log, "item_id": item_id})
            return None
        return item

    # Plumbing -----------------------------------------------------------------------------------

    def _session_object(self) -> dict[str, Any]:
        return session_object(
            self.dialect,
            self._config,
            session_id=self.session_id,
            model_id=self.model_id,
            expires_at=self._expires_at,
        )

    def report(self, code: str) -> None:
        """A server-side `error` the session survives (server_vad_failed): told, nothing ends."""
        if self.closed:
            return
        error_type, text = render(code)
        self._emit(error_payload(code, text, error_type=error_type))

    def _client_error(self, error: ClientError) -> None:
        logger.info("client event rejected", extra={**self._log, "code": error.code, "param": error.param})
        self._emit(
            error_payload(
                error.code, error.message, error_type=error.type, param=error.param, event_id=error.event_id
            )
        )

    def _emit(self, payload: dict[str, Any]) -> None:
        self._outbox.emit(payload)


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
