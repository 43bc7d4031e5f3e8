"""The realtime session core, sans I/O: feed it client messages, engine frames and the clock; collect
server events (`events_to_send`), what the slot must do besides listening (`engine_requests`: persona,
scripted speech) and PCM for Moshi (`audio_for_engine`). Like python-websockets' protocol.py, it owns no
socket, task, timer or clock, so the same object runs under the Starlette shell and in millisecond tests.

This module is the face (lifecycle and limits, the dispatch table, the drains) and the rules that cross
concepts (barge-in, trimming). The concepts' modules: turns.py, input_audio.py, items.py, transcripts.py,
session_update.py (what an update may change), client_config.py, events.py, transcription_session.py,
persona.py, scripted.py, engine_requests.py, delegation.py.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from serve_app.engine.port import EngineFrame
from serve_app.protocol.client_events import parse_client_event
from serve_app.protocol.dialect import Dialect
from serve_app.protocol.errors import ERRORS, ClientError, error_payload, render
from serve_app.protocol.ids import new_conversation_id
from serve_app.protocol.json_object import JsonObject
from serve_app.session import events as ev
from serve_app.session import transcription_session as transcription
from serve_app.session.client_config import response_options
from serve_app.session.config import SessionKind
from serve_app.session.conversation import Conversation
from serve_app.session.delegation import DelegateAsk, Delegation
from serve_app.session.engine_requests import EngineRequest, EngineRequests
from serve_app.session.input_audio import InputAudio, TranscriptionRequest
from serve_app.session.items import Items
from serve_app.session.outbox import Outbox, OutgoingEvent
from serve_app.session.persona import PersonaPrompt
from serve_app.session.scripted import Scripts
from serve_app.session.session_update import updated_config
from serve_app.session.settings import SessionSettings
from serve_app.session.state import Lifetime, SessionState, StateError, require
from serve_app.session.transcripts import Transcripts
from serve_app.session.turns import Turns

if TYPE_CHECKING:
    from serve_app.config import ModelTraits
    from serve_app.delegate.config import DelegateConfig
    from serve_app.delegate.messages import DelegateReply

__all__ = ["RealtimeSession", "TranscriptionRequest"]

logger = logging.getLogger(__name__)


class RealtimeSession:
    def __init__(
        self,
        *,
        session_id: str,
        model_id: str,
        dialect: Dialect,
        settings: SessionSettings,
        now_epoch_s: float,
        traits: ModelTraits | None = None,
        kind: SessionKind = SessionKind.REALTIME,
        delegate: DelegateConfig | None = None,
    ) -> None:
        """`now_epoch_s`: wall-clock time at creation (the core reads no clock), for session.expires_at.
        `traits`: what the model does with a persona (persona.py); None: it has no prompt channel.
        `kind`: a transcription session (transcription_session.py) has no Moshi; its `model_id` is its ASR
        backend, its transcription model until an update names another.
        `delegate`: the text model that answers for Moshi (delegation.py); None: tools are only echoed."""
        self.session_id = session_id
        self.model_id = model_id
        self.dialect = dialect
        self.settings = settings
        self.kind = kind
        transcribing = kind is SessionKind.TRANSCRIPTION
        # Read by the shells, written only here.
        self.state = SessionState.CONNECTING
        self._requests = EngineRequests()
        self._persona = PersonaPrompt(traits=traits, dialect=dialect, requests=self._requests)
        self.config = transcription.initial_config(kind, settings, model_id, self._persona.defaults)
        self._expires_at = int(now_epoch_s + settings.max_session_s)
        self._lifetime = Lifetime(settings)
        self.failure: str | None = None
        """The error code the session ended with (`fail`), None while open or after a plain close."""
        self._outbox = Outbox(dialect)
        self._log = {"session_id": session_id, "model": model_id, "dialect": dialect.value}
        emit = self._outbox.emit
        self.conversation = Conversation(new_conversation_id(), retained_audio_ms=settings.retained_audio_ms)
        self._items = Items(dialect=dialect, conversation=self.conversation, emit=emit, added=self._trim)
        self._scripts = Scripts(conversation=self.conversation, ask=self._requests.put)
        self._input = InputAudio(
            settings=settings,
            input_format=self.config.input_format,
            items=self._items,
            emit=emit,
            engine_backlog=not transcribing,
        )
        self._turns = Turns(
            dialect=dialect,
            settings=settings,
            conversation=self.conversation,
            emit=emit,
            options=lambda params: response_options(dialect, self.config, self.conversation.id, params),
            item_opened=self._trim,
            scripts=self._scripts,
            log=self._log,
        )
        self._transcripts = Transcripts(
            items=self._items, open_speech=lambda: self._input.open_speech, emit=emit, log=self._log
        )
        self._delegation = Delegation(
            delegate=None if transcribing else delegate,
            dialect=dialect,
            conversation=self.conversation,
            turns=self._turns,
            config=lambda: self.config,
            report=self._server_error,
            log=self._log,
        )
        respond = transcription.refuse_response if transcribing else self._on_response_create
        self._handlers: dict[str, ev.Handler] = dict(
            (
                ev.route(self._on_session_update, *ev.SESSION_UPDATE),
                ev.route(self._on_session_update, *ev.TRANSCRIPTION_SESSION_UPDATE),
                ev.route(self._input.append, *ev.APPEND),
                ev.route(self._on_commit, *ev.COMMIT),
                ev.route(self._input.clear, *ev.CLEAR),
                ev.route(self._on_item_create, *ev.ITEM_CREATE),
                ev.route(self._on_item_retrieve, *ev.ITEM_RETRIEVE),
                ev.route(self._on_item_delete, *ev.ITEM_DELETE),
                ev.route(self._on_item_truncate, *ev.ITEM_TRUNCATE),
                ev.route(respond, *ev.RESPONSE_CREATE),
                ev.route(self._turns.on_cancel, *ev.RESPONSE_CANCEL),
                ev.route(self._turns.on_output_audio_clear, *ev.OUTPUT_AUDIO_CLEAR),
            )
        )

    # Introspection -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.state is SessionState.CLOSED

    @property
    def active_response_id(self) -> str | None:
        response = self._turns.active
        return None if response is None else response.id

    @property
    def input_audio_ms(self) -> float:
        return self._input.audio_ms  # all input audio so far: the clock VAD events are stamped in

    @property
    def open_speech(self) -> tuple[str, int] | None:
        return self._input.open_speech  # the user turn server VAD hears now (InputAudio.open_speech)

    @property
    def transcribing(self) -> bool:
        return self.kind is SessionKind.TRANSCRIPTION

    # Inputs -------------------------------------------------------------------------------------

    def connect(self) -> None:
        require("connect", self.state, SessionState.CONNECTING)
        self.state = SessionState.OPEN
        self._outbox.emit({"type": "session.created", "session": self._session_object()})
        if self.dialect is Dialect.BETA:
            conversation = {"id": self.conversation.id, "object": "realtime.conversation"}
            self._outbox.emit({"type": "conversation.created", "conversation": conversation})
        logger.info("realtime session open", extra=self._log)

    def preset(self, session: JsonObject) -> JsonObject:
        """Before `connect()`: configure the session from a GA session object (a client secret's or a
        WebRTC call's, serve_app/server/client_secrets.py) as a session.update would, silently, so that
        session.created shows it. Returns the session object session.created will carry; raises the
        ClientError a session.update with it would get. The client may still update the session later."""
        require("preset", self.state, SessionState.CONNECTING)
        update = json.dumps({"type": "session.update", "session": session})
        event = parse_client_event(Dialect.GA, update)  # minted through the GA endpoint: GA's shape
        assert isinstance(event, ev.SESSION_UPDATE)
        self._take_update(event, Dialect.GA)
        return self._session_object()

    def receive_client_text(self, data: str | bytes) -> None:
        """Handle one client WebSocket message. Whatever is wrong with it becomes exactly one `error`."""
        if self.closed:
            return
        require("receive a client event", self.state, SessionState.OPEN)
        self._lifetime.heard()
        if len(data) > self.settings.max_message_bytes:
            # Not even parsed (that is what the limit saves): no event_id to echo.
            limit = self.settings.max_message_bytes
            self._client_error(ClientError("message_too_large", size=len(data), limit=limit))
            return
        event_id: str | None = None
        try:
            event = parse_client_event(self.dialect, data)
            event_id = getattr(event, "event_id", None)
            self._handlers[str(getattr(event, "type", ""))](event)
        except (ClientError, StateError) as exc:
            error = exc if isinstance(exc, ClientError) else ClientError("invalid_state", detail=str(exc))
            error.event_id = error.event_id if error.event_id is not None else event_id
            self._client_error(error)

    def receive_engine_frame(self, frame: EngineFrame) -> None:
        """One 80 ms step of Moshi (see turns.py)."""
        if self.closed:
            return
        require("receive an engine frame", self.state, SessionState.OPEN)
        if self.transcribing:
            raise RuntimeError("a transcription session has no Moshi slot: engine frames are a shell bug")
        self._turns.receive_frame(frame)
        self._input.frame_stepped()

    def advance_clock(self, now_s: float) -> None:
        """Monotonic seconds, every few hundred ms: the session's limits, the append rate's refill and
        the responses' deadlines (frames count too, whichever runs out first)."""
        if self.state is not SessionState.OPEN:
            return
        if (ended := self._lifetime.ended(now_s)) is not None:
            code, limit_s = ended
            self.fail(code, limit_s=limit_s)
            return
        self._input.on_clock(now_s)
        self._turns.on_clock(now_s)
        self._delegation.on_clock(now_s)

    def fail(self, code: str, message: str | None = None, **fields: Any) -> None:
        """Queue a server-side `error` (session_lost, server_at_capacity, ...) and close the session.
        Legal before connect(): a rejected socket gets the error without session.created."""
        if self.closed:
            return
        self.failure = code
        error_type, text = render(code, **fields) if message is None else (ERRORS[code].type, message)
        self._turns.fail({"type": error_type, "code": code})
        self._outbox.emit(error_payload(code, text, error_type=error_type))
        self.state = SessionState.CLOSED
        logger.info("realtime session failed: %s", code, extra={**self._log, "code": code})

    def close(self) -> None:
        """The socket went away; ignore whatever still arrives."""
        self.state = SessionState.CLOSED

    def report(self, code: str) -> None:
        """A server-side `error` the session survives (server_vad_failed): told, nothing ends."""
        if not self.closed:
            error_type, text = render(code)
            self._outbox.emit(error_payload(code, text, error_type=error_type))

    # Outputs ------------------------------------------------------------------------------------

    def events_to_send(self) -> list[OutgoingEvent]:
        """Server events in order, each a JSON text frame with its GA type and error code; drains."""
        return self._outbox.drain()

    def engine_requests(self) -> list[EngineRequest]:
        """What the slot must do besides hearing audio, in order (engine_requests.py); drains. The shell
        drains it before each `audio_for_engine`: a prompted model's persona goes ahead of its first audio."""
        if self._input.audio_waiting:
            self._persona.fix(self.config)
        return self._requests.drain()

    def audio_for_engine(self) -> list[npt.NDArray[np.float32]]:
        """Decoded input PCM (24 kHz mono float32) for the model slot; drains."""
        audio = self._input.take_for_engine()
        if audio:
            self._persona.fix(self.config)  # fixed from here on, even for a shell that asked no requests
        return audio

    def transcription_requests(self) -> list[TranscriptionRequest]:
        """Committed user audio to transcribe (only while session transcription is on); drains."""
        return self._input.take_transcriptions()

    # Hooks for collaborators (ASR, VAD) ----------------------------------------------------------

    def input_transcription_delta(self, item_id: str, delta: str) -> None:
        if not self.closed:
            self._transcripts.delta(item_id, delta)

    def input_transcription_completed(self, item_id: str, transcript: str, *, streamed: bool = False) -> None:
        self._transcripts.completed(item_id, transcript, streamed=streamed)
        if not self.closed and self._items.user_item(item_id) is not None:
            self._delegation.user_turn_transcribed()

    def input_transcription_failed(self, item_id: str, message: str) -> None:
        self._transcripts.failed(item_id, message)

    def speech_started(self, audio_start_ms: int) -> str:
        """Server VAD heard the user start (see InputAudio.speech_started). Barge-in: a response Moshi
        is speaking is cancelled when `interrupt_response` asks for it (Moshi hears the user anyway)."""
        if self.closed:
            return ""
        item_id = self._input.speech_started(audio_start_ms)
        self._delegation.user_speaking()
        detection = self.config.turn_detection
        if detection is not None and detection.interrupt_response and self._turns.streaming is not None:
            self._turns.cancel("turn_detected")
        return item_id

    def speech_stopped(self, audio_end_ms: int, speech_end_ms: int | None = None) -> str:
        """Server VAD heard the user stop (silence included; the speech ended at `speech_end_ms`)."""
        if self.closed:
            return ""
        return self._input.speech_stopped(audio_end_ms, speech_end_ms, self._transcription())

    # The delegate (delegation.py) -----------------------------------------------------------------

    def delegate_asks(self) -> list[DelegateAsk]:
        """Questions for the delegate, to be answered off the audio path; drains."""
        return self._delegation.take_asks()

    def delegate_replied(self, ask_id: int, reply: DelegateReply, now_s: float) -> None:
        if not self.closed:
            self._delegation.replied(ask_id, reply, now_s)

    def delegate_failed(self, ask_id: int, code: str, message: str) -> None:
        if not self.closed:
            self._delegation.failed(ask_id, code, message)

    # Client events ------------------------------------------------------------------------------

    def _on_session_update(self, event: ev.SessionUpdate | ev.TranscriptionSessionUpdate) -> None:
        self._take_update(event, self.dialect)
        updated_type = transcription.updated_type(self.kind, self.dialect)
        self._outbox.emit({"type": updated_type, "session": self._session_object()})

    def _take_update(self, event: ev.SessionUpdate | ev.TranscriptionSessionUpdate, dialect: Dialect) -> None:
        updated = updated_config(
            event,
            dialect=dialect,
            kind=self.kind,
            config=self.config,
            persona=self._persona,
            audio_sent=self._turns.audio_sent,
        )
        if updated.input_format is not self.config.input_format:
            self._input.set_format(updated.input_format)
        self.config = updated

    def _on_item_create(self, event: ev.ItemCreate) -> None:
        self._scripts.item_added(self._items.create(event))

    def _on_commit(self, event: ev.Commit) -> None:
        self._input.commit(self._transcription())

    def _on_response_create(self, event: ev.ResponseCreate) -> None:
        """Assistant text pending: Moshi says it; else with a delegate, the delegate answers; else the
        response waits for Moshi's next utterance."""
        if self._delegation.enabled and not self._scripts.pending:
            self._delegation.on_response_create(event.response)
        else:
            self._turns.on_create(event)

    def _transcription(self) -> dict[str, Any] | None:
        """The client's transcription settings; with a delegate, every turn is transcribed (the delegate
        reads the user's words), on the default backend unless the client chose one."""
        if self.config.transcription is None and self._delegation.enabled:
            return {}
        return self.config.transcription

    def _on_item_retrieve(self, event: ev.ItemRetrieve) -> None:
        self._items.retrieve(event.item_id, self.config)

    def _on_item_delete(self, event: ev.ItemDelete) -> None:
        item = self._items.get(event.item_id)
        if item is self._turns.streaming_item:
            raise ClientError("item_in_progress", param="item_id", item_id=item.id)
        self._items.delete(item)

    def _on_item_truncate(self, event: ev.ItemTruncate) -> None:
        item = self._items.truncate(event)
        if item is self._turns.streaming_item:
            self._turns.cancel("client_cancelled")  # the client stopped playing it: stop saying it
        self._items.truncated(event)

    # Plumbing -----------------------------------------------------------------------------------

    def _trim(self) -> None:
        """Keep at most `max_items`: the oldest go first, never the item a response is streaming into."""
        self._items.trim(self.settings.max_items, keep=self._turns.streaming_item)

    def _session_object(self) -> JsonObject:
        return transcription.echo(
            self.kind, self.dialect, self.config, self.session_id, self.model_id, self._expires_at
        )

    def _server_error(self, code: str, message: str) -> None:
        self._outbox.emit(error_payload(code, message, error_type=ERRORS[code].type))

    def _client_error(self, e: ClientError) -> None:
        logger.info("client event rejected", extra={**self._log, "code": e.code, "param": e.param})
        self._outbox.client_error(e)
