"""What the property test knows without looking inside the session: the operations it draws, what a
strict client can know from the event stream alone (ClientView), a reference model of Moshi's
current utterance (SpokenUtterance), written independently of the core's turns.py, and the slot's side of
scripted speech (ScriptingSlot), as the engine does it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st

from serve_app.constants import FRAME_MS, FRAME_SAMPLES
from serve_app.engine.port import EngineFrame
from serve_app.protocol.dialect import Dialect
from serve_app.protocol.server_events import wire_type
from serve_app.session.engine_requests import EngineRequest, Say, StopSaying

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


@dataclass(frozen=True)
class ScriptItem:
    """An assistant text item (what the next response.create says), and that response.create at once;
    `replace`: cancelling the open response first (an agent that changes what it says)."""

    words: int
    create: bool
    replace: bool = False


SCRIPT_WORDS = ("§a", "§bb", "§c", "§dd")
"""Scripted words are marked: Moshi's own text pieces never contain §."""


def script_text(words: int) -> str:
    return " ".join(SCRIPT_WORDS[:words])


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
    | ScriptItem
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
    st.builds(ScriptItem, words=st.integers(1, len(SCRIPT_WORDS)), create=st.booleans()),
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
# Scripted speech at length: scripts asked for often, and frames enough (few clock ticks) to say them.
script_ops = st.builds(
    ScriptItem, words=st.integers(1, len(SCRIPT_WORDS)), create=st.just(True), replace=st.booleans()
)
_SCRIPTED = [frame_ops] * 6 + [script_ops] * 2 + [response_ops] * 2 + [clock_ops]
scripted_ops = st.integers(0, len(_SCRIPTED) - 1).flatmap(lambda index: _SCRIPTED[index])


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


@dataclass
class SpokenUtterance:
    """The reference model of Moshi's current utterance: frames so far, trailing silent frames, and
    whether the response carrying it was cancelled while it goes on (muted)."""

    silence_frames: int
    max_frames: int
    frames: int = 0
    silent: int = 0
    muted: bool = False

    def step(self, speaking: bool) -> bool:
        """One frame; True when the utterance ended with it."""
        self.frames += 1
        self.silent = 0 if speaking else self.silent + 1
        return self.silent >= self.silence_frames or self.frames >= self.max_frames

    @property
    def ended_by_silence(self) -> bool:
        return self.silent >= self.silence_frames


class ScriptingSlot:
    """The slot's side of the session's engine requests, as the engine does scripted speech
    (serve_app/engine/forced_text.py): a request takes effect `delay` frames after the session made it
    (the wire, the tick); a script starts `lag` unscripted frames later (the text lag), says a pause, each
    word then a pause, and a last pause marked done; a stop drops the rest. Other frames are Moshi's own."""

    def __init__(self, *, delay: int, lag: int) -> None:
        self._delay, self._lag = delay, lag
        self._requests: deque[tuple[int, EngineRequest]] = deque()
        self._frame = 0
        self._steps: deque[str | None] = deque()
        self._lag_left = 0

    def submit(self, requests: list[EngineRequest]) -> None:
        self._requests.extend((self._frame + self._delay, request) for request in requests)

    @property
    def backlog(self) -> int:
        """Frames until every request has taken effect and every script is said."""
        return self._delay + self._lag + len(self._steps) + 1

    def step(self, speaking: bool, text: str | None) -> EngineFrame:
        while self._requests and self._requests[0][0] <= self._frame:
            _, request = self._requests.popleft()
            if isinstance(request, Say):
                words = request.text.split(" ")
                steps: list[str | None] = [None]
                for index, word in enumerate(words):
                    steps += [word if index == 0 else f" {word}", None]
                self._steps, self._lag_left = deque([*steps, None]), self._lag
            elif isinstance(request, StopSaying):
                self._steps.clear()
        self._frame += 1
        if self._steps and self._lag_left:
            self._lag_left -= 1
        elif self._steps:
            piece = self._steps.popleft()
            pcm = np.full(FRAME_SAMPLES, 0.2, dtype=np.float32)
            return EngineFrame(pcm, piece, piece is not None, scripted=True, script_done=not self._steps)
        pcm = np.full(FRAME_SAMPLES, 0.1 if speaking else 0.0, dtype=np.float32)
        return EngineFrame(pcm=pcm, text=text, speaking=speaking)
