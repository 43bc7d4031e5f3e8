"""Turn-taking: Moshi's engine frames → utterances → responses.

Moshi is full-duplex: it hears every appended sample and speaks when it wants. Each utterance becomes
one response (response.py); a client's response.create opens a response that waits for the next
utterance. A response ends with its utterance, at its deadlines, or by `cancel`; a cancelled response's
utterance goes on in the model, muted, until it ends.

A response.create with assistant text pending (scripted.py) opens a scripted response instead: it says
that text, bound by the first frame that carries it, and ends completed with the frame that carries the
script's end. It owns the turn: Moshi's own frames meanwhile stay off the wire (as a muted utterance).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from serve_app.constants import FRAME_MS, FRAME_SAMPLES
from serve_app.engine.port import EngineFrame
from serve_app.protocol.dialect import Dialect
from serve_app.protocol.errors import ClientError
from serve_app.protocol.ids import new_item_id, new_response_id
from serve_app.protocol.json_object import JsonObject
from serve_app.session.config import ResponseOptions
from serve_app.session.conversation import AssistantItem, ClientItem, Conversation
from serve_app.session.events import OutputAudioClear, ResponseCancel, ResponseCreate
from serve_app.session.response import Deadlines, FinalStatus, Reason, Response
from serve_app.session.scripted import Scripts
from serve_app.session.settings import SessionSettings
from serve_app.session.state import ResponseState, StateError, require
from serve_app.session.utterance import Utterance, UtteranceEnd

logger = logging.getLogger(__name__)


class Turns:
    def __init__(
        self,
        *,
        dialect: Dialect,
        settings: SessionSettings,
        conversation: Conversation,
        emit: Callable[[dict[str, Any]], None],
        options: Callable[[BaseModel | None], ResponseOptions],
        item_opened: Callable[[], None],
        scripts: Scripts,
        log: dict[str, str],
    ) -> None:
        self._dialect = dialect
        self._conversation = conversation
        self._emit = emit
        self._options = options
        """The options of a new response: session defaults, with a response.create's overrides if given."""
        self._item_opened = item_opened
        """Called once a response has opened Moshi's new item (the session trims the conversation)."""
        self._scripts = scripts
        self._log = log
        self._deadlines = Deadlines.from_settings(settings)
        self._silence_frames = math.ceil(settings.utterance_silence_ms / FRAME_MS)
        self._max_frames = math.ceil(settings.max_utterance_ms / FRAME_MS)
        self._response: Response | None = None
        """The active response (waiting or streaming); None when there is none."""
        self._utterance: Utterance | None = None
        self.last_response_id: str | None = None
        self.audio_sent = False
        """Assistant audio reached the client (the session's voice is fixed from then on)."""

    @property
    def active(self) -> Response | None:
        return self._response

    @property
    def streaming(self) -> Response | None:
        """The active response if Moshi's utterance is flowing into it."""
        response = self._response
        return response if response is not None and response.state is ResponseState.STREAMING else None

    @property
    def streaming_item(self) -> AssistantItem | None:
        """The item a response is streaming into (never trimmed, never deleted)."""
        return None if self._response is None else self._response.item

    # Moshi's side ----------------------------------------------------------------------------------

    def receive_frame(self, frame: EngineFrame) -> None:
        """One 80 ms step of Moshi. Audio reaches the client only inside a response."""
        if len(frame.pcm) != FRAME_SAMPLES:
            raise ValueError(f"an engine frame has {FRAME_SAMPLES} samples, got {len(frame.pcm)}")
        response = self._response
        script = response if response is not None and response.scripted else None
        if self._scripts.current(frame):
            if script is not None:
                self._say(script, frame)
            # else: the script outlived its response (it ends with it: StopSaying is on its way)
        elif not frame.scripted:
            # A scripted response, or one waiting for the delegate's words, owns the turn.
            self._moshi_frame(frame, muted=response is not None and (response.scripted or response.delegated))
        # else: a stopped script's leftover (scripted.py): off the wire
        if self._response is not None and self._response.on_frame():
            self._end_unanswered(self._response)

    def _moshi_frame(self, frame: EngineFrame, *, muted: bool) -> None:
        """A frame of Moshi's own; `muted` while a scripted response owns the turn (an utterance that
        starts then stays off the wire until it ends)."""
        utterance = self._utterance
        if utterance is None and frame.speaking:
            utterance = self._utterance = Utterance(
                silence_frames=self._silence_frames, max_frames=self._max_frames
            )
            if muted:
                utterance.muted = True
            else:
                self._open_item()
        if utterance is not None:
            end = utterance.add(frame.speaking)
            if not utterance.muted:
                response = self._streaming_response()
                response.add_frame(frame)
                self.audio_sent |= response.options.audio_output
            if end is not None:
                self._utterance = None
                if not utterance.muted:
                    status: FinalStatus = "completed" if end is UtteranceEnd.SILENCE else "incomplete"
                    reason: Reason | None = None if end is UtteranceEnd.SILENCE else "max_output_tokens"
                    self._finish(self._streaming_response(), status, reason=reason)

    def _say(self, response: Response, frame: EngineFrame) -> None:
        """A frame of the running script: its response opens its item with the first one and ends with
        the script (or, like an utterance, at `max_utterance_ms`)."""
        if response.state is ResponseState.WAITING:
            self._open_item()
        response.add_frame(frame)
        self.audio_sent |= response.options.audio_output
        if frame.script_done:
            self._finish(response, "completed")
        elif response.frames >= self._max_frames:
            self._finish(response, "incomplete", reason="max_output_tokens")

    def on_clock(self, now_s: float) -> None:
        response = self._response
        if response is None or not response.on_clock(now_s):
            return
        if response.state is ResponseState.WAITING:
            self._end_unanswered(response)
            return
        # Moshi steps only on input audio: without frames its utterance cannot end by silence.
        logger.info("response stalled without engine frames", extra={**self._log, "response_id": response.id})
        self._utterance = None
        self._finish(response, "incomplete")

    # The client's side -----------------------------------------------------------------------------

    def on_create(self, event: ResponseCreate) -> None:
        """response.create: a response that says the pending assistant text, if any (scripted.py), else
        one that waits for Moshi's next utterance."""
        if self._response is not None:
            raise ClientError("conversation_already_has_active_response", response_id=self._response.id)
        text = self._scripts.take()
        response = self._new_response(self._options(event.response), scripted=text is not None)
        if text is not None:
            self._scripts.say(text)
            logger.info("response says a script", extra={**self._log, "response_id": response.id})
        else:
            logger.info(
                "response waiting for Moshi to speak", extra={**self._log, "response_id": response.id}
            )

    # The delegate's side (delegation.py) ----------------------------------------------------------

    def open_delegated(self, params: BaseModel | None) -> Response:
        """A response that waits for the delegate's answer (a response.create's, or a user turn's)."""
        if self._response is not None:
            raise ClientError("conversation_already_has_active_response", response_id=self._response.id)
        response = self._new_response(self._options(params))
        response.delegated = True
        logger.info("response waits for the delegate", extra={**self._log, "response_id": response.id})
        return response

    def speak(self, response: Response, text: str) -> None:
        """The delegate answered `response` with text: Moshi says it (a scripted response from here)."""
        response.speak()
        self._scripts.say(text)

    def call_functions(self, response: Response, calls: list[JsonObject]) -> None:
        """The delegate answered `response` with function calls: each becomes a function_call item, and
        the response is done (the client runs them, adds their output, and asks for the next response)."""
        previous_ids = [self._conversation.add(ClientItem(id=call["id"], wire=call)) for call in calls]
        response.call_functions(calls, previous_ids)
        self._item_opened()
        self._finish(response, "completed")

    def fail_delegated(self, response: Response, error: dict[str, str]) -> None:
        """The delegate gave no usable answer: the response ends failed (its error was told already)."""
        if response is self._response and response.delegated:
            self._finish(response, "failed", error=error)

    def yield_floor(self) -> bool:
        """End Moshi's own response so a delegate's answer can start: True when the floor is free now. A
        client's or the delegate's response keeps it until it ends."""
        response = self._response
        if response is None:
            return True
        if response.scripted or response.delegated:
            return False
        self.cancel(None)
        return True

    def on_cancel(self, event: ResponseCancel) -> None:
        response = self._response
        if response is None or (event.response_id and event.response_id != response.id):
            param = "response_id" if event.response_id else None
            raise ClientError("response_cancel_not_active", param=param)
        self.cancel("client_cancelled")

    def on_output_audio_clear(self, event: OutputAudioClear) -> None:
        """The client dropped the audio it had not played: the response (if any) is cancelled and the
        clear acknowledged with its id, or with the last response's."""
        self.cancel("client_cancelled")
        if self.last_response_id is None:
            raise ClientError("response_cancel_not_active")
        self._emit({"type": "output_audio_buffer.cleared", "response_id": self.last_response_id})

    def cancel(self, reason: Reason | None) -> Response | None:
        """End the active response (if any) as cancelled; Moshi's utterance goes on in the model, so the
        rest of it stays off the wire until it ends. Returns the response it ended."""
        response = self._response
        if response is None:
            return None
        was_streaming = response.state is ResponseState.STREAMING
        self._finish(response, "cancelled", reason=reason)
        if was_streaming and self._utterance is not None:
            self._utterance.muted = True
        return response

    def fail(self, error: dict[str, str]) -> None:
        """The session ends under the active response: every response.created gets its response.done."""
        if self._response is not None:
            self._finish(self._response, "failed", error=error)

    # Plumbing ---------------------------------------------------------------------------------------

    def _new_response(self, options: ResponseOptions, *, scripted: bool = False) -> Response:
        self._response = Response(
            response_id=new_response_id(),
            dialect=self._dialect,
            options=options,
            deadlines=self._deadlines,
            emit=self._emit,
            scripted=scripted,
        )
        self._response.announce()
        return self._response

    def _open_item(self) -> None:
        """Moshi started speaking: the waiting response takes the utterance, or a new one is opened."""
        response = self._response or self._new_response(self._options(None))
        item = AssistantItem(id=new_item_id(), audio_output=response.options.audio_output)
        previous_id = self._conversation.add(item)
        response.open_item(item, previous_id)
        self._item_opened()
        logger.info(
            "Moshi started speaking", extra={**self._log, "response_id": response.id, "item_id": item.id}
        )

    def _streaming_response(self) -> Response:
        response = self._response
        if response is None:
            raise StateError(
                "stream a frame (no active response)", ResponseState.STREAMING, ResponseState.DONE
            )
        require("stream a frame", response.state, ResponseState.STREAMING)
        return response

    def _end_unanswered(self, response: Response) -> None:
        if response.scripted:
            # The model did not step (no input audio) or the slot cannot say scripts: the text was not said.
            logger.info(
                "the script did not start; response ends", extra={**self._log, "response_id": response.id}
            )
            self._finish(response, "incomplete")
            return
        # Moshi chose not to speak. "completed" with no output is what the SDK types allow for that:
        # "incomplete" would need a reason, and none of the four fits.
        logger.info(
            "Moshi did not speak; response ends empty", extra={**self._log, "response_id": response.id}
        )
        self._finish(response, "completed")

    def _finish(
        self,
        response: Response,
        status: FinalStatus,
        *,
        reason: Reason | None = None,
        error: dict[str, str] | None = None,
    ) -> None:
        if response.scripted and status != "completed":
            self._scripts.stop()  # the one place a script ends early: no more of it reaches the client
        previous_id = None
        if response.item is not None and response.item.id in self._conversation:
            previous_id = self._conversation.previous_id(response.item.id)
        response.finish(status, reason=reason, previous_item_id=previous_id, error=error)
        self._response = None
        self.last_response_id = response.id
        self._conversation.audio_added()
        logger.info(
            "response done",
            extra={**self._log, "response_id": response.id, "status": status, "frames": response.frames},
        )
