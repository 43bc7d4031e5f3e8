"""One response: Moshi's answer as the protocol sees it, from response.created to response.done.

A response carries at most one utterance: one assistant message item with one content part (audio with
its transcript, or text only). A client's response.create opens it before Moshi speaks (WAITING); the
next utterance binds to it (STREAMING); an utterance with no waiting response gets a fresh one. A
scripted response (scripted.py) carries the client's text instead, bound by the first frame that says it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from serve_app.constants import FRAME_MS
from serve_app.engine.port import EngineFrame
from serve_app.protocol.audio_stream import AudioEncoder
from serve_app.protocol.dialect import Dialect
from serve_app.protocol.json_object import JsonObject
from serve_app.session.client_config import ga_format
from serve_app.session.config import ResponseOptions
from serve_app.session.conversation import AssistantItem
from serve_app.session.settings import SessionSettings
from serve_app.session.state import ResponseState, require

FinalStatus = Literal["completed", "cancelled", "incomplete", "failed"]
Reason = Literal["turn_detected", "client_cancelled", "max_output_tokens", "content_filter"]

OUTPUT_INDEX = 0
CONTENT_INDEX = 0


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long a response may go without Moshi: waiting for it to start speaking (counted in engine frames
    and in clock time, whichever runs out first), and streaming without an engine frame (a stall)."""

    wait_frames: int
    wait_ms: int
    stall_ms: int

    @classmethod
    def from_settings(cls, settings: SessionSettings) -> Deadlines:
        wait_frames = math.ceil(settings.response_wait_ms / FRAME_MS)
        return cls(wait_frames, settings.response_wait_ms, settings.response_stall_ms)


class Response:
    def __init__(
        self,
        *,
        response_id: str,
        dialect: Dialect,
        options: ResponseOptions,
        deadlines: Deadlines,
        emit: Callable[[JsonObject], None],
        scripted: bool = False,
    ) -> None:
        self.id = response_id
        self.dialect = dialect
        self.options = options
        self._deadlines = deadlines
        self._emit = emit
        self.scripted = scripted
        """It says a client's text (scripted.py), not an utterance of Moshi's own."""
        self.delegated = False
        """It waits for the delegate's answer (delegation.py): it owns the turn, and its deadline is the
        delegate's, not Moshi's."""
        self.calls: list[JsonObject] = []
        """The function_call items it output (a delegate's tool calls), in output order."""
        self._encoder = AudioEncoder(options.output_format)
        self.state = ResponseState.WAITING
        self.status: str = "in_progress"
        self.status_details: JsonObject | None = None
        self.item: AssistantItem | None = None
        self.frames = 0
        self.audio_deltas = 0
        self.text_deltas = 0
        self._waited_frames = 0
        """Engine frames seen while waiting for Moshi to speak."""
        self._clock_mark_s: float | None = None
        """Clock tick that started the current deadline (the wait, or the silence of the engine)."""
        self._fresh = False
        """An engine frame arrived since the last clock tick."""

    # Deadlines -----------------------------------------------------------------------------------

    def on_frame(self) -> bool:
        """Moshi stepped an engine frame while this response was active (after the frame, as it left
        the response); True when a waiting response has now waited all its frames."""
        self._fresh = True
        if self.state is not ResponseState.WAITING or self.delegated:
            return False
        self._waited_frames += 1
        return self._waited_frames >= self._deadlines.wait_frames

    def on_clock(self, now_s: float) -> bool:
        """A clock tick; True when a deadline passed: still waiting after `wait_ms`, or streaming with no
        engine frame for `stall_ms`. Deadlines start at the first tick that sees them, so they never
        fire early."""
        if self._clock_mark_s is None or self.delegated:
            self._clock_mark_s, self._fresh = now_s, False
            return False
        elapsed_ms = (now_s - self._clock_mark_s) * 1000
        if self.state is ResponseState.WAITING:
            return elapsed_ms >= self._deadlines.wait_ms
        if self._fresh:
            self._clock_mark_s, self._fresh = now_s, False
            return False
        return elapsed_ms >= self._deadlines.stall_ms

    # Lifecycle -----------------------------------------------------------------------------------

    def announce(self) -> None:
        self._emit({"type": "response.created", "response": self.to_wire()})

    def open_item(self, item: AssistantItem, previous_item_id: str | None) -> None:
        """Bind the response to an utterance: announce its item and content part."""
        require("open the response's item", self.state, ResponseState.WAITING)
        self.state = ResponseState.STREAMING
        self.item = item
        in_progress = {**item.to_wire(self.dialect), "content": []}
        self._emit({"type": "response.output_item.added", **self._where(item=False), "item": in_progress})
        # openai-realtime-api-beta needs the conversation event before any content part event.
        announce = "conversation.item.added" if self.dialect is Dialect.GA else "conversation.item.created"
        self._emit({"type": announce, "previous_item_id": previous_item_id, "item": in_progress})
        self._emit({"type": "response.content_part.added", **self._where(), "part": self._part("")})

    def speak(self) -> None:
        """The delegate answered with text: from now on this is a scripted response, with Moshi's
        deadlines starting afresh."""
        self.delegated = False
        self.scripted = True
        self._waited_frames = 0
        self._clock_mark_s = None

    def call_functions(self, calls: list[JsonObject], previous_ids: list[str | None]) -> None:
        """Output the function_call items `calls` (already in the conversation, after `previous_ids`):
        the Realtime function-calling flow, one item after another, each complete (the arguments come
        whole, in one delta)."""
        require("output function calls", self.state, ResponseState.WAITING)
        self.delegated = False
        for index, (call, previous_id) in enumerate(zip(calls, previous_ids, strict=True)):
            where = {"response_id": self.id, "output_index": index}
            in_progress = {**call, "status": "in_progress", "arguments": ""}
            self._emit({"type": "response.output_item.added", **where, "item": in_progress})
            announce = (
                "conversation.item.added" if self.dialect is Dialect.GA else "conversation.item.created"
            )
            self._emit({"type": announce, "previous_item_id": previous_id, "item": in_progress})
            args = {**where, "item_id": call["id"], "call_id": call["call_id"]}
            self._emit({"type": "response.function_call_arguments.delta", **args, "delta": call["arguments"]})
            done = {**args, "arguments": call["arguments"]}
            if self.dialect is Dialect.GA:
                done["name"] = call["name"]  # a GA field; beta clients take it from the item
            self._emit({"type": "response.function_call_arguments.done", **done})
            self._emit({"type": "response.output_item.done", **where, "item": call})
            if self.dialect is Dialect.GA:
                self._emit({"type": "conversation.item.done", "previous_item_id": previous_id, "item": call})
            self.calls.append(call)

    def add_frame(self, frame: EngineFrame) -> None:
        require("add a frame to the response", self.state, ResponseState.STREAMING)
        assert self.item is not None
        text = frame.text
        if text and not self.item.pieces and not self.scripted:
            text = text.lstrip()  # Moshi's word-boundary space would otherwise open the transcript
        self.item.add_frame(frame.pcm, text or None)
        self.frames += 1
        if text:
            self.text_deltas += 1
            kind = (
                "response.output_audio_transcript.delta"
                if self.options.audio_output
                else "response.output_text.delta"
            )
            self._emit({"type": kind, **self._where(), "delta": text})
        if self.options.audio_output:
            self.audio_deltas += 1
            self._emit(
                {
                    "type": "response.output_audio.delta",
                    **self._where(),
                    "delta": self._encoder.encode(frame.pcm),
                }
            )

    def finish(
        self,
        status: FinalStatus,
        *,
        reason: Reason | None = None,
        previous_item_id: str | None = None,
        error: JsonObject | None = None,
    ) -> None:
        """Close the open part and item (if any) with their done events, then response.done.

        `error` ({type, code}) goes with `failed`: the session is ending under the response."""
        require("finish the response", self.state, ResponseState.WAITING, ResponseState.STREAMING)
        self.status = status
        if status != "completed":
            self.status_details = {"type": status} if reason is None else {"type": status, "reason": reason}
            if error is not None:
                self.status_details["error"] = error
        if self.state is ResponseState.STREAMING:
            assert self.item is not None
            self.item.status = "completed" if status == "completed" else "incomplete"
            self._close_item(previous_item_id)
        self.state = ResponseState.DONE
        self._emit({"type": "response.done", "response": self.to_wire()})

    def _close_item(self, previous_item_id: str | None) -> None:
        assert self.item is not None
        transcript = self.item.transcript
        if self.options.audio_output:
            self._emit({"type": "response.output_audio.done", **self._where()})
            self._emit(
                {"type": "response.output_audio_transcript.done", **self._where(), "transcript": transcript}
            )
        else:
            self._emit({"type": "response.output_text.done", **self._where(), "text": transcript})
        self._emit({"type": "response.content_part.done", **self._where(), "part": self._part(transcript)})
        item = self.item.to_wire(self.dialect)
        self._emit({"type": "response.output_item.done", **self._where(item=False), "item": item})
        if self.dialect is Dialect.GA:
            self._emit({"type": "conversation.item.done", "previous_item_id": previous_item_id, "item": item})

    # Wire shapes ---------------------------------------------------------------------------------

    def _where(self, *, item: bool = True) -> JsonObject:
        """The ids every event of this response's output repeats."""
        where: JsonObject = {"response_id": self.id, "output_index": OUTPUT_INDEX}
        if item:
            assert self.item is not None
            where |= {"item_id": self.item.id, "content_index": CONTENT_INDEX}
        return where

    def _part(self, transcript: str) -> JsonObject:
        # Both dialects say audio/text in content_part events (items say output_audio/output_text in GA).
        if self.options.audio_output:
            return {"type": "audio", "transcript": transcript}
        return {"type": "text", "text": transcript}

    def usage(self) -> JsonObject:
        """Tokens counted honestly: one audio token per 80 ms Mimi frame, one text token per text piece.
        Input: each output frame was stepped on one input frame Moshi heard."""
        audio_tokens = self.audio_deltas
        output_tokens = audio_tokens + self.text_deltas
        return {
            "total_tokens": self.frames + output_tokens,
            "input_tokens": self.frames,
            "output_tokens": output_tokens,
            "input_token_details": {"text_tokens": 0, "audio_tokens": self.frames, "cached_tokens": 0},
            "output_token_details": {"text_tokens": self.text_deltas, "audio_tokens": audio_tokens},
        }

    def _output(self) -> list[JsonObject]:
        return [*([] if self.item is None else [self.item.to_wire(self.dialect)]), *self.calls]

    def to_wire(self) -> JsonObject:
        options = self.options
        wire: JsonObject = {
            "id": self.id,
            "object": "realtime.response",
            "status": self.status,
            "status_details": self.status_details,
            "output": self._output() if self.state is ResponseState.DONE else [],
            "conversation_id": options.conversation_id,
            "max_output_tokens": options.max_output_tokens,
            "metadata": options.metadata,
            "usage": self.usage() if self.state is ResponseState.DONE else None,
        }
        if self.dialect is Dialect.GA:
            wire["output_modalities"] = ["audio"] if options.audio_output else ["text"]
            wire["audio"] = {
                "output": {"format": ga_format(options.output_format), "voice": options.voice_name}
            }
        else:
            wire["modalities"] = ["text", "audio"] if options.audio_output else ["text"]
            wire["voice"] = options.voice_name
            wire["output_audio_format"] = options.output_format.value
            wire["temperature"] = options.temperature
        return wire
