"""Property tests: random interleavings of engine frames, clock ticks and client events, in both dialects.

The checker sees only what a client sees (the event stream, strict-validated by the harness) and holds
the session to the protocol's promises after every step: responses open and close in pairs, nothing of a
response flows outside it, ids are consistent, cancel/create answer according to what the client has
seen, and every malformed client event gets exactly one error echoing its event_id.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_app.constants import FRAME_MS, FRAME_SAMPLES
from serve_app.engine.port import EngineFrame
from serve_app.protocol.dialect import Dialect
from serve_app.protocol.server_events import wire_type
from serve_app.session.settings import SessionSettings

from .conftest import FAST
from .harness import Harness, b64_pcm16, only_error, types_of

PROFILE = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SETTINGS = [
    FAST,  # silence 3 frames, wait 5 frames, max 10 frames, stall 1 s
    SessionSettings(
        utterance_silence_ms=160, response_wait_ms=160, max_utterance_ms=240, response_stall_ms=240
    ),
    SessionSettings(utterance_silence_ms=80, response_wait_ms=80, max_utterance_ms=80, response_stall_ms=80),
]

# The GA names of the events that belong to one response's output.
_PART_EVENTS = {
    "response.output_audio.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.delta",
    "response.output_audio_transcript.done",
    "response.output_text.delta",
    "response.output_text.done",
}


def ga_names(dialect: Dialect) -> dict[str, str]:
    """Dialect wire name → GA name, for the events whose names differ."""
    return {wire_type(dialect, name): name for name in _PART_EVENTS}


# Operations ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frames:
    count: int
    speaking: bool
    text: str | None


@dataclass(frozen=True)
class Clock:
    step_s: float


@dataclass(frozen=True)
class Create:
    text_only: bool
    metadata: bool


@dataclass(frozen=True)
class Cancel:
    which: str
    """none | open | stale | bogus"""


@dataclass(frozen=True)
class Truncate:
    which: str
    """open | assistant | user | missing"""
    pick: int
    audio_end_ms: int
    content_index: int


@dataclass(frozen=True)
class ClearOutput:
    pass


@dataclass(frozen=True)
class AppendCommit:
    samples: int
    commit: bool


@dataclass(frozen=True)
class ClearInput:
    pass


@dataclass(frozen=True)
class Malformed:
    kind: int


@dataclass(frozen=True)
class Fail:
    pass


@dataclass(frozen=True)
class SessionUpdate:
    text_only: bool | None
    ulaw: bool | None
    voice: str | None


@dataclass(frozen=True)
class ItemCreate:
    item_id: str | None
    previous: str
    """none | root | last | pick | missing"""
    pick: int


@dataclass(frozen=True)
class ItemDelete:
    which: str
    """open | pick | missing"""
    pick: int


@dataclass(frozen=True)
class ItemRetrieve:
    pick: int


@dataclass(frozen=True)
class Vad:
    samples: int


@dataclass(frozen=True)
class Transcript:
    pick: int
    failed: bool


Op = (
    Frames
    | Clock
    | Create
    | Cancel
    | Truncate
    | ClearOutput
    | AppendCommit
    | ClearInput
    | Malformed
    | Fail
    | SessionUpdate
    | ItemCreate
    | ItemDelete
    | ItemRetrieve
    | Vad
    | Transcript
)

MALFORMED: list[tuple[str, str | None]] = [
    ("not json {", None),
    ('{"type": "no.such.event", "event_id": "EID"}', "EID"),
    ('{"event_id": "EID"}', "EID"),
    ('{"type": "input_audio_buffer.append", "event_id": "EID"}', "EID"),
    ('{"type": "input_audio_buffer.append", "event_id": "EID", "audio": "***"}', "EID"),
    ('{"type": "conversation.item.truncate", "event_id": "EID", "item_id": "x", "content_index": 0}', "EID"),
    (
        '{"type": "conversation.item.truncate", "event_id": "EID", "content_index": 0, "audio_end_ms": 0}',
        "EID",
    ),
    ('{"type": "response.cancel", "event_id": "EID", "response_id": 5}', "EID"),
    ('{"type": "response.create", "event_id": "EID", "response": {"metadata": {"n": 1}}}', "EID"),
    ('{"type": "conversation.item.delete", "event_id": "EID"}', "EID"),
    ("[1, 2, 3]", None),
]

frame_ops = st.builds(
    Frames,
    count=st.integers(1, 6),
    speaking=st.booleans(),
    text=st.sampled_from([None, None, " word", "x", " "]),
)
clock_ops = st.builds(Clock, step_s=st.sampled_from([0.0, 0.05, 0.1, 0.25, 0.5, 1.1, 5.0]))
response_ops = st.one_of(
    st.builds(Create, text_only=st.booleans(), metadata=st.booleans()),
    st.builds(Cancel, which=st.sampled_from(["none", "open", "stale", "bogus"])),
    st.builds(
        Truncate,
        which=st.sampled_from(["open", "assistant", "user", "missing"]),
        pick=st.integers(0, 20),
        audio_end_ms=st.integers(-10, 1200),
        content_index=st.sampled_from([0, 0, 0, 1]),
    ),
    st.just(ClearOutput()),
)
other_ops = st.one_of(
    st.builds(AppendCommit, samples=st.sampled_from([0, 100, 2399, 2400, 4800]), commit=st.booleans()),
    st.just(ClearInput()),
    st.builds(Malformed, kind=st.integers(0, len(MALFORMED) - 1)),
    st.builds(
        SessionUpdate,
        text_only=st.sampled_from([None, None, True, False]),
        ulaw=st.sampled_from([None, None, True, False]),
        voice=st.sampled_from([None, None, "alloy", "echo"]),
    ),
    st.builds(
        ItemCreate,
        item_id=st.sampled_from([None, None, "client_a", "client_b"]),
        previous=st.sampled_from(["none", "none", "root", "last", "pick", "missing"]),
        pick=st.integers(0, 20),
    ),
    st.builds(
        ItemDelete, which=st.sampled_from(["open", "pick", "pick", "missing"]), pick=st.integers(0, 20)
    ),
    st.builds(ItemRetrieve, pick=st.integers(0, 20)),
    st.builds(Vad, samples=st.sampled_from([0, 2400, 4800])),
    st.builds(Transcript, pick=st.integers(0, 20), failed=st.booleans()),
)
# Weighted towards what moves responses: Moshi's frames, the clock and the response events.
_WEIGHTED = [frame_ops] * 4 + [clock_ops] * 2 + [response_ops] * 3 + [other_ops] * 2
ops = st.integers(0, len(_WEIGHTED) - 1).flatmap(lambda index: _WEIGHTED[index])


# The client's view ----------------------------------------------------------------------------


@dataclass
class ClientView:
    """What a strict client knows from the event stream alone."""

    dialect: Dialect
    open_response: str | None = None
    open_item: str | None = None
    part_open: bool = False
    item_done: bool = False
    response_items: dict[str, list[str]] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    item_ids: set[str] = field(default_factory=set)
    assistant_items: list[str] = field(default_factory=list)
    user_items: list[str] = field(default_factory=list)
    audio_ms: dict[str, int] = field(default_factory=dict)
    audio_output: dict[str, bool] = field(default_factory=dict)
    """Per response: whether it carries audio (its modalities)."""
    committed: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    """The conversation's item order, as the previous_item_id of each announcement places it."""

    def __post_init__(self) -> None:
        self.names = ga_names(self.dialect)

    def see(self, event: dict[str, Any]) -> None:
        kind = self.names.get(event["type"], event["type"])
        if kind == "response.created":
            response_id = event["response"]["id"]
            assert self.open_response is None, f"{response_id} created while {self.open_response} is open"
            assert response_id not in self.created, "response ids are unique"
            assert event["response"]["status"] == "in_progress"
            self.open_response = response_id
            self.response_items[response_id] = []
            self.created.append(response_id)
            modalities = event["response"].get("output_modalities") or event["response"].get("modalities")
            self.audio_output[response_id] = "audio" in modalities
        elif kind == "response.output_item.added":
            self._in_open_response(event)
            assert self.open_item is None, "one item per response"
            item_id = event["item"]["id"]
            assert item_id not in self.item_ids, f"item id {item_id} reused"
            self.item_ids.add(item_id)
            self.open_item = item_id
            self.item_done = False
            assert self.open_response is not None
            self.response_items[self.open_response].append(item_id)
            self.assistant_items.append(item_id)
            self.audio_ms[item_id] = 0
        elif kind in ("conversation.item.added", "conversation.item.created"):
            item_id = event["item"]["id"]
            if item_id == self.open_item and item_id not in self.order:
                assert event["item"]["role"] == "assistant"
                assert event["previous_item_id"] == (self.order[-1] if self.order else None)
            else:
                # A client may reuse its own id once the item is deleted; the server never reuses one.
                assert item_id not in self.order, f"item id {item_id} already in the conversation"
                assert item_id.startswith("client_") or item_id not in self.item_ids, f"{item_id} reused"
                self.item_ids.add(item_id)
                if event["item"].get("role") == "user":
                    self.user_items.append(item_id)
            previous = event["previous_item_id"]
            assert previous is None or previous in self.order, (previous, self.order)
            self.order.insert(0 if previous is None else self.order.index(previous) + 1, item_id)
        elif kind == "conversation.item.done":
            item_id = event["item"]["id"]
            assert item_id in self.item_ids
            if item_id in self.audio_ms:
                assert item_id == self.open_item and self.item_done, (
                    "assistant item.done after output_item.done"
                )
                if item_id in self.order:
                    position = self.order.index(item_id)
                    expected = self.order[position - 1] if position else None
                    assert event["previous_item_id"] == expected
            else:
                assert item_id in self.order
                assert event["previous_item_id"] == (
                    self.order[self.order.index(item_id) - 1] if self.order.index(item_id) else None
                )
        elif kind == "conversation.item.deleted":
            assert event["item_id"] in self.order
            assert event["item_id"] != self.open_item or self.item_done
            self.order.remove(event["item_id"])
        elif kind == "response.content_part.added":
            self._in_open_item(event)
            assert not self.part_open
            self.part_open = True
        elif kind in _PART_EVENTS:
            self._in_open_item(event)
            assert self.part_open, f"{kind} outside an open content part"
            if kind == "response.output_audio.delta":
                assert self.open_item is not None
                self.audio_ms[self.open_item] += FRAME_MS
        elif kind == "response.content_part.done":
            self._in_open_item(event)
            assert self.part_open
            self.part_open = False
        elif kind == "response.output_item.done":
            self._in_open_response(event)
            assert event["item"]["id"] == self.open_item and not self.item_done
            assert not self.part_open, "content part closed before its item"
            assert event["item"]["status"] in ("completed", "incomplete")
            self.item_done = True
        elif kind == "response.done":
            response = event["response"]
            response_id = response["id"]
            assert response_id in self.created, f"response.done for {response_id} never created"
            assert response_id == self.open_response, (
                f"response.done {response_id}, open {self.open_response}"
            )
            assert response["status"] in ("completed", "cancelled", "incomplete", "failed")
            output_ids = [item["id"] for item in response["output"]]
            assert output_ids == self.response_items[response_id], "response.done output = items announced"
            if self.open_item is not None:
                assert self.item_done, "item closed before response.done"
            assert not self.part_open
            self.done.append(response_id)
            self.open_response = None
            self.open_item = None
            self.item_done = False
        elif kind == "input_audio_buffer.committed":
            assert event["previous_item_id"] == (self.order[-1] if self.order else None)
            self.committed.append(event["item_id"])
        elif kind == "conversation.item.truncated":
            item_id = event["item_id"]
            assert item_id in self.audio_ms and item_id in self.order
            self.audio_ms[item_id] = min(self.audio_ms[item_id], event["audio_end_ms"])

    def _in_open_response(self, event: dict[str, Any]) -> None:
        assert self.open_response is not None, f"{event['type']} outside a response"
        assert event["response_id"] == self.open_response, (event["type"], event["response_id"])
        assert event["output_index"] == 0

    def _in_open_item(self, event: dict[str, Any]) -> None:
        self._in_open_response(event)
        assert self.open_item is not None and not self.item_done, f"{event['type']} outside an open item"
        assert event["item_id"] == self.open_item
        assert event["content_index"] == 0


# The driver -----------------------------------------------------------------------------------


class Driver:
    def __init__(self, dialect: Dialect, session_settings: SessionSettings) -> None:
        self.h = Harness(dialect, session_settings)
        self.view = ClientView(dialect)
        self.now = 100.0
        self.serial = 0
        self.failed = False
        self.session_settings = session_settings
        # A reference model of Moshi's current utterance: (frames, trailing silent frames), or None;
        # muted while the response carrying it was cancelled and the utterance goes on.
        self.utterance: tuple[int, int] | None = None
        self.muted = False
        self.silence_frames = math.ceil(session_settings.utterance_silence_ms / FRAME_MS)
        self.max_frames = math.ceil(session_settings.max_utterance_ms / FRAME_MS)

    # Plumbing

    def drain(self) -> list[dict[str, Any]]:
        events = self.h.events()
        for event in events:
            self.view.see(event)
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

    def frames(self, op: Frames) -> None:
        level = 0.1 if op.speaking else 0.0
        pcm = np.full(FRAME_SAMPLES, level, dtype=np.float32)
        for _ in range(op.count):
            self.h.session.receive_engine_frame(EngineFrame(pcm=pcm, text=op.text, speaking=op.speaking))
            self._expect_frame_outcome(op.speaking, self.drain())

    def _expect_frame_outcome(self, speaking: bool, events: list[dict[str, Any]]) -> None:
        """What one engine frame must do, by the reference model of utterances and muting."""
        kinds = [self.view.names.get(e["type"], e["type"]) for e in events]
        output = [k for k in kinds if k not in ("response.done", "response.created")]
        if self.utterance is None:
            if not speaking:
                assert output == [], "no output outside an utterance"
                return
            self.utterance = (0, 0)
            assert not self.muted
            assert "response.output_item.added" in kinds, "Moshi started speaking: its response opens"
        frames, silent = self.utterance
        frames, silent = frames + 1, 0 if speaking else silent + 1
        ended = silent >= self.silence_frames or frames >= self.max_frames
        self.utterance = None if ended else (frames, silent)
        if self.muted:
            assert output == [], "a cancelled response's utterance stays off the wire"
            self.muted = not ended
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
            if silent >= self.silence_frames:
                assert response["status"] == "completed"
            else:
                assert response["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
        else:
            assert self.view.open_item is not None, "the utterance goes on inside its response"

    def _closed_the_streaming_response(self, had_item: bool) -> None:
        """A cancel (or truncate, or clear) ended the response carrying the utterance: mute it."""
        if had_item and self.view.open_response is None:
            self.muted = self.utterance is not None

    # Operations with their expected answers

    def run(self, op: Op) -> None:
        if self.failed:
            return
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
                assert event["response"]["status"] == "completed" and event["response"]["output"] == []
        kinds = types_of(events)
        assert not any(k.endswith((".delta", ".added", ".created")) for k in kinds), kinds
        assert kinds.count("response.done") == (1 if kinds else 0), kinds

    def _create(self, op: Create) -> None:
        was_open = self.view.open_response
        params: dict[str, Any] = {}
        if op.text_only:
            params["output_modalities" if self.h.dialect is Dialect.GA else "modalities"] = ["text"]
        if op.metadata:
            params["metadata"] = {"k": "v"}
        _, events = self.send({"type": "response.create", "response": params})
        if was_open is not None:
            assert [(e["type"], e["error"]["code"]) for e in events] == [
                ("error", "conversation_already_has_active_response")
            ]
        else:
            assert types_of(events) == ["response.created"]
            if op.metadata:
                assert events[0]["response"]["metadata"] == {"k": "v"}

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
        ga = self.h.dialect is Dialect.GA
        session: dict[str, Any] = {"type": "realtime"} if ga else {}
        if op.text_only is not None:
            modalities = ["text"] if op.text_only else (["audio"] if ga else ["text", "audio"])
            session["output_modalities" if ga else "modalities"] = modalities
        if op.ulaw is not None:
            if ga:
                session["audio"] = {
                    "output": {"format": {"type": "audio/pcmu"} if op.ulaw else {"type": "audio/pcm"}}
                }
            else:
                session["output_audio_format"] = "g711_ulaw" if op.ulaw else "pcm16"
        if op.voice is not None:
            if ga:
                session.setdefault("audio", {}).setdefault("output", {})["voice"] = op.voice
            else:
                session["voice"] = op.voice
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
            ga = self.h.dialect is Dialect.GA
            expected = (
                ["conversation.item.added", "conversation.item.done"] if ga else ["conversation.item.created"]
            )
            assert kinds == expected
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
                self._clock(Clock(deadline_s))
        else:
            self.frames(Frames((s.utterance_silence_ms + s.response_wait_ms) // FRAME_MS + 2, False, None))
        assert self.view.open_response is None, "a response the client saw created never got response.done"
        assert self.view.created == self.view.done
        # A fresh request ends too, by clock alone.
        self._create(Create(text_only=False, metadata=True))
        for _ in range(3):
            self._clock(Clock(deadline_s))
        assert self.view.open_response is None
        assert self.view.created == self.view.done


@PROFILE
@given(
    dialect=st.sampled_from([Dialect.GA, Dialect.BETA]),
    session_settings=st.sampled_from(SETTINGS),
    steps=st.lists(ops, min_size=8, max_size=40),
    ending=st.sampled_from(["silence", "clock", "fail"]),
)
def test_random_interleavings_keep_the_protocol_promises(
    dialect: Dialect, session_settings: SessionSettings, steps: list[Op], ending: str
) -> None:
    driver = Driver(dialect, session_settings)
    for op in steps:
        driver.run(op)
    driver.settle(ending)


# The cancel race, deterministically --------------------------------------------------------------
#
# A client that saw response.created, output_item.added and audio sends response.cancel; before the
# session reads it, the response ends on its own. The cancel then finds no active response and is
# answered response_cancel_not_active, but the stream the client reads already holds the response's
# response.done, ahead of the error, for every way a response can end without the client.


def _open_streaming_response(h: Harness) -> str:
    events = h.frames(2, speaking=True, text=" hi")
    assert types_of(events)[:2] == ["response.created", "response.output_item.added"]
    assert h.name("response.output_audio.delta") in types_of(events)
    return str(events[0]["response"]["id"])


def _end_by_silence(h: Harness) -> list[dict[str, Any]]:
    return h.frames(3, speaking=False)


def _end_by_max_length(h: Harness) -> list[dict[str, Any]]:
    return h.frames(8, speaking=True, text="x")  # frames 3..10 of FAST's 10-frame cap


def _end_by_stall(h: Harness) -> list[dict[str, Any]]:
    return h.clock(10.0) + h.clock(11.1)  # no engine frame for more than response_stall_ms


ENDINGS = {"silence": _end_by_silence, "max_length": _end_by_max_length, "stall": _end_by_stall}


@pytest.mark.parametrize("ending", list(ENDINGS))
@pytest.mark.parametrize("named", [False, True], ids=["no_id", "with_id"])
def test_a_cancel_that_loses_the_race_finds_the_response_done_already_sent(
    h: Harness, ending: str, named: bool
) -> None:
    response_id = _open_streaming_response(h)
    ended = ENDINGS[ending](h)
    done = [e for e in ended if e["type"] == "response.done"]
    assert [e["response"]["id"] for e in done][:1] == [response_id]
    cancel: dict[str, Any] = {"type": "response.cancel", "event_id": "late"}
    if named:
        cancel["response_id"] = response_id
    error = only_error(h.send(cancel))
    assert (error["code"], error["event_id"]) == ("response_cancel_not_active", "late")
    # What the client read, in order: its response opened, streamed, ended, and only then the error.
    kinds = [(e["type"], e.get("response", {}).get("id")) for e in h.log]
    assert kinds.index(("response.done", response_id)) < len(kinds) - 1
    assert [k for k, rid in kinds if rid == response_id] == ["response.created", "response.done"]


@pytest.mark.parametrize("by", ["frames", "clock"])
def test_a_cancel_that_loses_the_race_with_an_unanswered_create(h: Harness, by: str) -> None:
    (created,) = h.send({"type": "response.create"})
    response_id = created["response"]["id"]
    ended = h.frames(5, speaking=False) if by == "frames" else h.clock(1.0) + h.clock(1.5)
    assert [e["response"]["id"] for e in ended if e["type"] == "response.done"] == [response_id]
    error = only_error(h.send({"type": "response.cancel", "response_id": response_id}))
    assert error["code"] == "response_cancel_not_active"


def test_a_cancel_of_a_response_bound_while_a_cancelled_utterance_went_on(h: Harness) -> None:
    """Cancel R1 mid-utterance (muted), create R2 during the muted rest, Moshi's next utterance binds
    R2: R2 is active for the session exactly as long as the client sees it open."""
    h.frame(speaking=True, text="a")
    h.send({"type": "response.cancel"})
    (created,) = h.send({"type": "response.create"})
    r2 = created["response"]["id"]
    assert h.frame(speaking=True, text="muted") == []
    assert h.session.active_response_id == r2
    assert h.frames(3, speaking=False) == []  # the muted utterance ends; R2 used 4 of its 5 frames
    events = h.frame(speaking=True, text="b")
    assert types_of(events)[0] == "response.output_item.added" and events[0]["response_id"] == r2
    events = h.send({"type": "response.cancel", "response_id": r2})
    assert types_of(events)[-1] == "response.done" and events[-1]["response"]["status"] == "cancelled"
