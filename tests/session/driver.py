"""The property test's driver: applies one drawn operation to a session and holds the answer to what
the client had seen (ClientView) and to the reference model of Moshi's utterance (SpokenUtterance). The
session's engine requests go to a ScriptingSlot, which makes the frames: scripted while it says a script,
else Moshi's own as drawn. A scripted response's text deltas always continue its text (the whole of it
when it completes), scripted text never shows outside it, and one that ends otherwise stops the script."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from serve_app.constants import FRAME_MS, FRAME_SAMPLES
from serve_app.engine.port import EngineFrame
from serve_app.protocol.dialect import Dialect
from serve_app.session.engine_requests import EngineRequest, Say, StopSaying
from serve_app.session.settings import SessionSettings

from .client_model import (
    MALFORMED,
    AppendCommit,
    Cancel,
    ClearInput,
    ClearOutput,
    ClientView,
    Clock,
    Create,
    Fail,
    Frames,
    ItemCreate,
    ItemDelete,
    ItemRetrieve,
    Malformed,
    Op,
    ScriptingSlot,
    ScriptItem,
    SessionUpdate,
    SpokenUtterance,
    Transcript,
    Truncate,
    Vad,
    script_text,
)
from .harness import Harness, b64_pcm16, types_of

_TEXT_DELTAS = ("response.output_audio_transcript.delta", "response.output_text.delta")


class Driver:
    def __init__(
        self, dialect: Dialect, session_settings: SessionSettings, *, engine_delay: int = 0, lag: int = 1
    ) -> None:
        self.h = Harness(dialect, session_settings)
        self.view = ClientView(dialect)
        self.now = 100.0
        self.serial = 0
        self.failed = False
        self.session_settings = session_settings
        self.utterance: SpokenUtterance | None = None
        """Moshi's current utterance, by the reference model (None between utterances)."""
        self.silence_frames = math.ceil(session_settings.utterance_silence_ms / FRAME_MS)
        self.max_frames = math.ceil(session_settings.max_utterance_ms / FRAME_MS)
        self.slot = ScriptingSlot(delay=engine_delay, lag=lag)
        self.pending: list[tuple[str, str]] = []
        """(item id, text) of the assistant text items the next response.create is to say."""
        self.scripts: dict[str, str] = {}
        """Scripted responses: id → the text they say."""
        self.texts: dict[str, str] = {}
        """Per response: its text deltas so far, joined."""
        self.op_requests: list[EngineRequest] = []
        """The engine requests the current operation made."""

    # Plumbing

    def drain(self) -> list[dict[str, Any]]:
        events = self.h.events()
        requests = self.h.session.engine_requests()
        self.slot.submit(requests)
        self.op_requests += requests
        for event in events:
            self.view.see(event)
            self._see_script(event, requests)
        if not self.failed:
            assert self.h.session.active_response_id == self.view.open_response, (
                "the session core and the client disagree about the open response"
            )
        return events

    def send(self, payload: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        self.serial += 1
        event_id = f"evt_{self.serial}"
        self.h.session.receive_client_text(json.dumps({**payload, "event_id": event_id}))
        events = self.drain()
        for event in events:
            if event["type"] == "error":
                assert event["error"]["event_id"] == event_id, event
        assert types_of(events).count("error") <= 1
        return event_id, events

    def _see_script(self, event: dict[str, Any], requests: list[EngineRequest]) -> None:
        """What scripted speech promises about one event (`requests`: those made with it)."""
        kind = self.view.names.get(event["type"], event["type"])
        if kind in _TEXT_DELTAS:
            response_id = event["response_id"]
            text = self.texts[response_id] = self.texts.get(response_id, "") + event["delta"]
            script = self.scripts.get(response_id)
            if script is None:
                assert "§" not in event["delta"], "scripted text outside its scripted response"
            else:
                assert "§" in event["delta"], "Moshi's own text in a scripted response"
                assert script.startswith(text), (script, text)
        elif kind == "response.done" and event["response"]["id"] in self.scripts:
            response = event["response"]
            if response["status"] == "completed":
                assert self.texts.get(response["id"]) == self.scripts[response["id"]], "said it all"
                assert StopSaying() not in requests
            else:
                assert StopSaying() in requests, "a scripted response that ends early stops its script"

    def frames(self, op: Frames) -> None:
        for _ in range(op.count):
            owned = self.view.open_response in self.scripts
            frame = self.slot.step(op.speaking, op.text)
            self.h.session.receive_engine_frame(frame)
            events = self.drain()
            if frame.scripted:
                self._expect_scripted_frame(owned, events)
            else:
                self._expect_frame_outcome(frame.speaking, events, script_owned=owned)

    def _expect_scripted_frame(self, owned: bool, events: list[dict[str, Any]]) -> None:
        """A frame of a script: output only inside a scripted response, one frame's worth (what it says
        is checked by _see_script); it steps no utterance of Moshi's own."""
        kinds = [self.view.names.get(e["type"], e["type"]) for e in events]
        output = [k for k in kinds if k not in ("response.done", "response.created")]
        assert "response.created" not in kinds
        if not owned:
            assert output == [], "a script's frame outside a scripted response stays off the wire"
            return
        assert kinds.count("response.output_audio.delta") <= 1
        assert sum(kinds.count(kind) for kind in _TEXT_DELTAS) <= 1

    def _expect_frame_outcome(
        self, speaking: bool, events: list[dict[str, Any]], *, script_owned: bool
    ) -> None:
        """What one engine frame of Moshi's own must do, by the reference model of utterances and muting
        (`script_owned`: a scripted response owns the turn, so an utterance that starts is muted)."""
        kinds = [self.view.names.get(e["type"], e["type"]) for e in events]
        output = [k for k in kinds if k not in ("response.done", "response.created")]
        utterance = self.utterance
        if utterance is None:
            if not speaking:
                assert output == [], "no output outside an utterance"
                return
            utterance = self.utterance = SpokenUtterance(self.silence_frames, self.max_frames)
            if script_owned:
                utterance.muted = True
            else:
                assert "response.output_item.added" in kinds, "Moshi started speaking: its response opens"
        ended = utterance.step(speaking)
        if ended:
            self.utterance = None
        if utterance.muted:
            assert output == [], "a cancelled response's utterance stays off the wire"
            return
        carrier = self.view.created[-1]
        audio = 1 if self.view.audio_output[carrier] else 0
        assert kinds.count("response.output_audio.delta") == audio, "one audio delta per frame, in audio"
        text_deltas = ("response.output_audio_transcript.delta", "response.output_text.delta")
        assert sum(kinds.count(kind) for kind in text_deltas) <= 1, "at most one text piece per frame"
        if ended:
            done = [e for e in events if e["type"] == "response.done"]
            assert done, "the utterance ended: its response is done"
            response = done[-1]["response"]
            if utterance.ended_by_silence:
                assert response["status"] == "completed"
            else:
                assert response["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
        else:
            assert self.view.open_item is not None, "the utterance goes on inside its response"

    def _closed_the_streaming_response(self, had_item: bool) -> None:
        """A cancel (or truncate, or clear) ended the response carrying the utterance: mute it."""
        if had_item and self.view.open_response is None and self.utterance is not None:
            self.utterance.muted = True

    # Operations with their expected answers

    def run(self, op: Op) -> None:
        if self.failed:
            return
        self.op_requests = []
        handler = getattr(self, f"_{type(op).__name__.lower()}")
        handler(op)

    def _frames(self, op: Frames) -> None:
        self.frames(op)

    def _clock(self, op: Clock) -> None:
        self.now += op.step_s
        had_item = self.view.open_item is not None
        self.h.session.advance_clock(self.now)
        events = self.drain()
        for event in events:
            if event["type"] == "response.done" and had_item:
                # Only a streaming response stalls; its utterance is over as far as the client knows.
                assert event["response"]["status_details"] == {"type": "incomplete"}
                self.utterance = None
            elif event["type"] == "response.done":
                # Moshi did not speak (completed, empty) or the script did not start (incomplete).
                scripted = event["response"]["id"] in self.scripts
                assert event["response"]["status"] == ("incomplete" if scripted else "completed")
                assert event["response"]["output"] == []
        kinds = types_of(events)
        assert not any(k.endswith((".delta", ".added", ".created")) for k in kinds), kinds
        assert kinds.count("response.done") == (1 if kinds else 0), kinds

    def _create(self, op: Create) -> None:
        was_open = self.view.open_response
        params = self.h.response_params(text_only=op.text_only)
        if op.metadata:
            params["metadata"] = {"k": "v"}
        texts = [text for item_id, text in self.pending if item_id in self.view.order]
        _, events = self.send({"type": "response.create", "response": params})
        if was_open is not None:
            assert [(e["type"], e["error"]["code"]) for e in events] == [
                ("error", "conversation_already_has_active_response")
            ]
            assert self.op_requests == []
        else:
            assert types_of(events) == ["response.created"]
            if op.metadata:
                assert events[0]["response"]["metadata"] == {"k": "v"}
            # The assistant text created since the last response.create (and not deleted) is said.
            self.pending = []
            if texts:
                self.scripts[events[0]["response"]["id"]] = " ".join(texts)
            assert self.op_requests == ([Say(" ".join(texts))] if texts else []), (self.op_requests, texts)

    def _scriptitem(self, op: ScriptItem) -> None:
        if op.replace and self.view.open_response is not None:
            self._cancel(Cancel("open"))
            self.op_requests = []
        text = script_text(op.words)
        _, events = self.send(self.h.assistant_text(text))
        assert types_of(events) == self.h.announce_types
        self.pending.append((events[0]["item"]["id"], text))
        if op.create:
            self._create(Create(text_only=False, metadata=False))

    def _cancel(self, op: Cancel) -> None:
        had_item = self.view.open_item is not None and self.view.open_response is not None
        was_open = self.view.open_response
        payload: dict[str, Any] = {"type": "response.cancel"}
        if op.which == "open" and was_open is not None:
            payload["response_id"] = was_open
        elif op.which == "stale" and self.view.done:
            payload["response_id"] = self.view.done[-1]
        elif op.which == "bogus":
            payload["response_id"] = "resp_bogus"
        _, events = self.send(payload)
        self._closed_the_streaming_response(had_item)
        named = payload.get("response_id")
        if was_open is not None and named in (None, was_open):
            assert types_of(events)[-1] == "response.done"
            assert "error" not in types_of(events)
            done = events[-1]["response"]
            assert done["id"] == was_open and done["status"] == "cancelled"
            assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        else:
            # Documented: no active response (or another response_id) → response_cancel_not_active.
            assert [(e["type"], e["error"]["code"]) for e in events] == [
                ("error", "response_cancel_not_active")
            ]

    def _truncate(self, op: Truncate) -> None:
        had_item = self.view.open_item is not None and self.view.open_response is not None
        view = self.view
        candidates = {
            "open": [view.open_item] if view.open_item else view.assistant_items[-1:],
            "assistant": view.assistant_items,
            "user": view.user_items,
            "missing": [],
        }[op.which]
        item_id = candidates[op.pick % len(candidates)] if candidates else "item_missing"
        was_open_item = item_id == view.open_item and view.open_response is not None
        payload = {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": op.content_index,
            "audio_end_ms": op.audio_end_ms,
        }
        _, events = self.send(payload)
        self._closed_the_streaming_response(had_item)
        kinds = types_of(events)
        if kinds[-1] == "conversation.item.truncated":
            assert item_id in view.audio_ms and op.content_index == 0
            if was_open_item:
                assert "response.done" in kinds, "truncating the item being spoken cancels its response"
                assert view.open_response is None
        else:
            assert kinds == ["error"], kinds
            code = events[0]["error"]["code"]
            if item_id not in view.order:
                assert code == "item_not_found"
            elif item_id in view.user_items:
                assert code == "unsupported_content_type"
            else:
                assert code in (
                    "unsupported_content_type",  # text-only responses' items
                    "content_index_out_of_range",
                    "audio_end_ms_out_of_range",
                ), code
                if code == "audio_end_ms_out_of_range":
                    assert not 0 <= op.audio_end_ms <= view.audio_ms[item_id] or op.content_index != 0

    def _clearoutput(self, op: ClearOutput) -> None:
        had_item = self.view.open_item is not None and self.view.open_response is not None
        del op
        was_open = self.view.open_response
        last = self.view.done[-1] if self.view.done else None
        _, events = self.send({"type": "output_audio_buffer.clear"})
        self._closed_the_streaming_response(had_item)
        if was_open is not None:
            assert types_of(events)[-2:] == ["response.done", "output_audio_buffer.cleared"]
            assert events[-1]["response_id"] == was_open
            assert events[-2]["response"]["status"] == "cancelled"
        elif last is not None:
            assert types_of(events) == ["output_audio_buffer.cleared"]
            assert events[0]["response_id"] == last
        else:
            assert [(e["type"], e["error"]["code"]) for e in events] == [
                ("error", "response_cancel_not_active")
            ]

    def _appendcommit(self, op: AppendCommit) -> None:
        _, events = self.send({"type": "input_audio_buffer.append", "audio": b64_pcm16(op.samples)})
        assert events == [] or [e["error"]["code"] for e in events] == ["input_audio_backlog_full"]
        if op.commit:
            _, events = self.send({"type": "input_audio_buffer.commit"})
            kinds = types_of(events)
            if kinds == ["error"]:
                assert events[0]["error"]["code"] == "input_audio_buffer_commit_empty"
            else:
                assert kinds[0] == "input_audio_buffer.committed"

    def _clearinput(self, op: ClearInput) -> None:
        del op
        _, events = self.send({"type": "input_audio_buffer.clear"})
        assert types_of(events) == ["input_audio_buffer.cleared"]

    def _malformed(self, op: Malformed) -> None:
        text, event_id = MALFORMED[op.kind]
        self.serial += 1
        if event_id is not None:
            event_id = f"bad_{self.serial}"
            text = text.replace("EID", event_id)
        self.h.session.receive_client_text(text)
        events = self.drain()
        assert types_of(events) == ["error"], types_of(events)
        assert events[0]["error"]["event_id"] == event_id

    def _fail(self, op: Fail) -> None:
        """The session ends under whatever is open: that response ends `failed`, then the one error."""
        del op
        was_open = self.view.open_response
        self.h.session.fail("session_lost")
        self.failed = True
        events = self.drain()
        assert [(e["type"], e["error"]["code"]) for e in events if e["type"] == "error"] == [
            ("error", "session_lost")
        ]
        assert events[-1]["type"] == "error"
        done = [e for e in events if e["type"] == "response.done"]
        if was_open is None:
            assert len(events) == 1
        else:
            (last,) = done
            assert last["response"]["id"] == was_open and last["response"]["status"] == "failed"
            details = last["response"]["status_details"]
            assert details["error"] == {"type": "server_error", "code": "session_lost"}
        assert self.view.open_response is None

    def _sessionupdate(self, op: SessionUpdate) -> None:
        output_format = None if op.ulaw is None else ("g711_ulaw" if op.ulaw else "pcm16")
        session = self.h.session_shape(text_only=op.text_only, output_format=output_format, voice=op.voice)
        _, events = self.send({"type": "session.update", "session": session})
        kinds = types_of(events)
        if kinds == ["error"]:
            assert events[0]["error"]["code"] == "invalid_session_update" and op.voice is not None
        else:
            assert kinds == ["session.updated"]

    def _itemcreate(self, op: ItemCreate) -> None:
        order = self.view.order
        payload: dict[str, Any] = {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        }
        if op.item_id is not None:
            payload["item"]["id"] = op.item_id
        previous = {
            "none": None,
            "root": "root",
            "last": order[-1] if order else None,
            "pick": order[op.pick % len(order)] if order else None,
            "missing": "item_missing",
        }[op.previous]
        if previous is not None:
            payload["previous_item_id"] = previous
        _, events = self.send(payload)
        kinds = types_of(events)
        if kinds == ["error"]:
            code = events[0]["error"]["code"]
            if code == "item_already_exists":
                assert op.item_id in order
            else:
                assert code == "item_not_found" and previous == "item_missing"
        else:
            assert kinds == self.h.announce_types
            if previous is None:
                assert events[0]["previous_item_id"] == (order[-2] if len(order) > 1 else None)

    def _itemdelete(self, op: ItemDelete) -> None:
        view = self.view
        if op.which == "open" and view.open_item is not None:
            item_id = view.open_item
        elif op.which == "pick" and view.order:
            item_id = view.order[op.pick % len(view.order)]
        else:
            item_id = "item_missing"
        speaking = item_id == view.open_item and view.open_response is not None
        _, events = self.send({"type": "conversation.item.delete", "item_id": item_id})
        kinds = types_of(events)
        if item_id == "item_missing":
            assert events[0]["error"]["code"] == "item_not_found"
        elif speaking:
            assert events[0]["error"]["code"] == "item_in_progress"
        else:
            assert kinds == ["conversation.item.deleted"]

    def _itemretrieve(self, op: ItemRetrieve) -> None:
        order = self.view.order
        item_id = order[op.pick % len(order)] if order else "item_missing"
        _, events = self.send({"type": "conversation.item.retrieve", "item_id": item_id})
        if item_id == "item_missing":
            assert events[0]["error"]["code"] == "item_not_found"
        else:
            assert types_of(events) == ["conversation.item.retrieved"]
            assert events[0]["item"]["id"] == item_id

    def _vad(self, op: Vad) -> None:
        streaming = self.view.open_item is not None and self.view.open_response is not None
        was_open = self.view.open_response
        detection = self.h.session.config.turn_detection
        interrupts = streaming and detection is not None and detection.interrupt_response
        item_id = self.h.session.speech_started(0)
        events = self.drain()
        assert types_of(events)[0] == "input_audio_buffer.speech_started"
        if interrupts:
            # The user barged in on Moshi: its response is cancelled as response.cancel would.
            assert types_of(events)[-1] == "response.done"
            done = events[-1]["response"]
            assert done["id"] == was_open and done["status"] == "cancelled"
            assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
            self._closed_the_streaming_response(True)
        else:
            assert types_of(events) == ["input_audio_buffer.speech_started"]
        if op.samples:
            self.send({"type": "input_audio_buffer.append", "audio": b64_pcm16(op.samples)})
        assert self.h.session.speech_stopped(100) == item_id
        events = self.drain()
        assert types_of(events)[:2] == ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed"]

    def _transcript(self, op: Transcript) -> None:
        users = self.view.committed
        item_id = users[op.pick % len(users)] if users else "item_missing"
        if op.failed:
            self.h.session.input_transcription_failed(item_id, "asr down")
        else:
            self.h.session.input_transcription_completed(item_id, "hello")
        events = self.drain()
        if item_id not in self.view.order:
            assert events == []
        else:
            assert len(events) == (1 if op.failed else 2)

    def settle(self, ending: str) -> None:
        """Moshi falls silent (or stops sending frames and only the clock runs, or the session fails):
        every response the client saw created must end with response.done."""
        s = self.session_settings
        if ending == "fail":
            self.run(Fail())
            self.h.session.receive_engine_frame(
                EngineFrame(np.zeros(FRAME_SAMPLES, np.float32), "late", speaking=True)
            )
            self.h.session.receive_client_text('{"type": "response.create"}')
            self.h.session.advance_clock(self.now + 100)
            assert self.h.events() == [], "nothing after fail()"
            assert self.view.open_response is None, (
                "a response the client saw created never got response.done"
            )
            return
        if self.failed:
            return
        deadline_s = max(s.response_wait_ms, s.response_stall_ms) / 1000 + 0.01
        if ending == "clock":
            for _ in range(3):
                self.run(Clock(deadline_s))
        else:
            quiet = (s.utterance_silence_ms + s.response_wait_ms) // FRAME_MS + 2
            self.frames(Frames(quiet + self.slot.backlog, False, None))
        assert self.view.open_response is None, "a response the client saw created never got response.done"
        assert self.view.created == self.view.done
        # A fresh request ends too, by clock alone.
        self.run(Create(text_only=False, metadata=True))
        for _ in range(3):
            self.run(Clock(deadline_s))
        assert self.view.open_response is None
        assert self.view.created == self.view.done
