"""Test harness: a RealtimeSession whose every emitted event is checked the way strict clients check it.

`strict_check` validates each server event against its dialect's `openai` type with `strict=True` (the
type table is rebuilt here from the SDK unions, independently of serve_app), then asserts the fields strict
clients read although the SDK types leave them optional: every event's `event_id`; items' id, object, type,
status (messages: role, content; text parts their text, audio parts a transcript); responses' id, object,
status, status_details, output, usage, metadata, conversation_id and modalities (no audio bytes in output);
errors' type, code, message, param, event_id; sessions' id and object (GA: type and model; beta: no model).
"""

from __future__ import annotations

import base64
import json
import types
from typing import TYPE_CHECKING, Any, TypeVar, Union, get_args, get_origin

import numpy as np
from openai.types import realtime as ga
from openai.types.beta import realtime as beta
from pydantic import BaseModel

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.port import EngineFrame
from serve_app.protocol.dialect import Dialect
from serve_app.session.engine_requests import EngineRequest
from serve_app.session.session import RealtimeSession
from serve_app.session.settings import SessionSettings

if TYPE_CHECKING:
    from serve_app.config import ModelTraits
    from serve_app.delegate.config import DelegateConfig


def _table(union: Any) -> dict[str, type[BaseModel]]:
    inner = get_args(union)[0]
    assert get_origin(inner) in (Union, types.UnionType)
    table = {}
    for member in get_args(inner):
        (value,) = get_args(member.model_fields["type"].annotation)
        table[value] = member
    return table


SERVER_TYPES = {Dialect.GA: _table(ga.RealtimeServerEvent), Dialect.BETA: _table(beta.RealtimeServerEvent)}


def _check_part(part: dict[str, Any]) -> None:
    assert "type" in part, part
    if part["type"] in ("input_text", "output_text", "text"):
        assert isinstance(part.get("text"), str), part
    if part["type"] in ("input_audio", "output_audio", "audio"):
        assert "transcript" in part, part


def _check_item(item: dict[str, Any]) -> None:
    for key in ("id", "object", "type", "status"):
        assert key in item, (key, item)
    assert item["object"] == "realtime.item"
    if item["type"] == "message":
        assert item.get("role") in ("user", "assistant", "system"), item
        assert isinstance(item.get("content"), list), item
        for part in item["content"]:
            _check_part(part)
    if item["type"] == "function_call":
        for key in ("call_id", "name", "arguments"):
            assert isinstance(item.get(key), str), (key, item)


def _check_response(response: dict[str, Any], dialect: Dialect) -> None:
    for key in ("id", "object", "status", "status_details", "output", "usage", "metadata", "conversation_id"):
        assert key in response, (key, response)
    assert response["id"].startswith("resp_")
    assert response["object"] == "realtime.response"
    assert ("output_modalities" if dialect is Dialect.GA else "modalities") in response
    for item in response["output"]:
        _check_item(item)
        for part in item.get("content", []):
            assert "audio" not in part, "response output carries no audio"


def strict_check(dialect: Dialect, text: str) -> dict[str, Any]:
    event = json.loads(text)
    model = SERVER_TYPES[dialect].get(event["type"])
    assert model is not None, f"{event['type']} is not a {dialect} server event"
    model.model_validate(event, strict=True)
    assert event["event_id"].startswith("event_"), event
    if "item" in event:
        _check_item(event["item"])
    if "response" in event:
        _check_response(event["response"], dialect)
    if "part" in event:
        _check_part(event["part"])
    if event["type"] == "error":
        for key in ("type", "code", "message", "param", "event_id"):
            assert key in event["error"], (key, event)
    if event["type"] == "session.created" or event["type"] == "session.updated":
        session = event["session"]
        assert "id" in session and "object" in session
        if dialect is Dialect.BETA:
            assert "model" not in session, "beta types session.model as a Literal of OpenAI names"
        else:
            assert session["type"] == "realtime" and "model" in session
    return event


def b64_pcm16(samples: np.ndarray[Any, Any] | int) -> str:
    """Base64 PCM16 of int16 samples, or of that many samples of silence."""
    pcm = np.zeros(samples, dtype="<i2") if isinstance(samples, int) else np.asarray(samples, dtype="<i2")
    return base64.b64encode(pcm.tobytes()).decode()


BETA_INPUT_NAMES = {
    "transcription": "input_audio_transcription",
    "noise_reduction": "input_audio_noise_reduction",
}
"""GA audio.input field → the beta session's flat name (turn_detection is spelled the same)."""


GA_FORMATS = {"pcm16": {"type": "audio/pcm", "rate": 24000}, "g711_ulaw": {"type": "audio/pcmu"}}
GA_FORMATS["g711_alaw"] = {"type": "audio/pcma"}
"""Beta's audio format names → GA's format objects, exactly as the session echoes them."""

T = TypeVar("T")


class Harness:
    """Drives one session; every drained event is strict-checked, and event ids must never repeat.

    Tests speak dialect-neutrally through it: `session_shape`/`update_session`/`response_params` build
    a client's payload in the session's dialect, `format_of` reads one back, and `pick` chooses what
    differs (so the tests themselves hold no dialect branches)."""

    def __init__(
        self,
        dialect: Dialect,
        settings: SessionSettings | None = None,
        *,
        connect: bool = True,
        traits: ModelTraits | None = None,
        delegate: DelegateConfig | None = None,
    ) -> None:
        self.dialect = dialect
        self.session = RealtimeSession(
            session_id="sess_test",
            model_id="moshi-sft",
            dialect=dialect,
            settings=settings or SessionSettings(),
            now_epoch_s=1_700_000_000,
            traits=traits,
            delegate=delegate,
        )
        self.seen_event_ids: set[str] = set()
        self.log: list[dict[str, Any]] = []
        if connect:
            self.session.connect()
            self.events()

    def name(self, ga_name: str) -> str:
        """The dialect's name for a GA-named event."""
        from serve_app.protocol.server_events import wire_type

        return wire_type(self.dialect, ga_name)

    def send(self, event: dict[str, Any] | str | bytes) -> list[dict[str, Any]]:
        self.session.receive_client_text(event if isinstance(event, (str, bytes)) else json.dumps(event))
        return self.events()

    def frames(
        self, count: int, *, speaking: bool, text: str | None = None, level: float = 0.1
    ) -> list[dict[str, Any]]:
        pcm = np.full(FRAME_SAMPLES, level if speaking else 0.0, dtype=np.float32)
        for _ in range(count):
            self.session.receive_engine_frame(EngineFrame(pcm=pcm, text=text, speaking=speaking))
        return self.events()

    def frame(self, *, speaking: bool, text: str | None = None) -> list[dict[str, Any]]:
        return self.frames(1, speaking=speaking, text=text)

    def said(self, *pieces: str | None, done: bool = False, level: float = 0.2) -> list[dict[str, Any]]:
        """Frames of a running script, one per piece (None: a pause between words), as the engine
        reports forced text (EngineFrame.scripted); `done` marks the last one as the script's end."""
        pcm = np.full(FRAME_SAMPLES, level, dtype=np.float32)
        for index, piece in enumerate(pieces):
            last = done and index == len(pieces) - 1
            frame = EngineFrame(
                pcm=pcm, text=piece, speaking=piece is not None, scripted=True, script_done=last
            )
            self.session.receive_engine_frame(frame)
        return self.events()

    def requests(self) -> list[EngineRequest]:
        """What the session asks of its slot (engine_requests.py), drained the way the shell does."""
        return self.session.engine_requests()

    def clock(self, now_s: float) -> list[dict[str, Any]]:
        self.session.advance_clock(now_s)
        return self.events()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for outgoing in self.session.events_to_send():
            event = strict_check(self.dialect, outgoing.text)
            assert event["event_id"] not in self.seen_event_ids
            self.seen_event_ids.add(event["event_id"])
            out.append(event)
        self.log.extend(out)
        return out

    def update_input(self, **fields: Any) -> list[dict[str, Any]]:
        """A session.update of input settings (turn_detection, transcription, noise_reduction) in the
        dialect's shape: GA nests them under audio.input, beta spells them flat."""
        if self.dialect is Dialect.GA:
            session: dict[str, Any] = {"type": "realtime", "audio": {"input": fields}}
        else:
            session = {BETA_INPUT_NAMES.get(name, name): value for name, value in fields.items()}
        return self.send({"type": "session.update", "session": session})

    def append(self, samples: int) -> list[dict[str, Any]]:
        return self.send({"type": "input_audio_buffer.append", "audio": b64_pcm16(samples)})

    # The dialect's shapes --------------------------------------------------------------------------

    @property
    def ga(self) -> bool:
        return self.dialect is Dialect.GA

    def pick(self, *, ga: T, beta: T) -> T:
        """What the session's dialect says where the dialects differ."""
        return ga if self.ga else beta

    @property
    def announce_types(self) -> list[str]:
        """The events that announce a complete new item (GA: added then done; beta: created)."""
        return self.pick(
            ga=["conversation.item.added", "conversation.item.done"], beta=["conversation.item.created"]
        )

    @property
    def item_done_types(self) -> list[str]:
        """After response.output_item.done: GA repeats the item as conversation.item.done, beta has none."""
        return self.pick(ga=["conversation.item.done"], beta=[])

    def session_shape(
        self,
        *,
        text_only: bool | None = None,
        voice: str | None = None,
        input_format: str | None = None,
        output_format: str | None = None,
    ) -> dict[str, Any]:
        """A session.update's session object; formats by their beta names (pcm16, g711_ulaw, g711_alaw)."""
        if not self.ga:
            flat = {
                "modalities": None if text_only is None else (["text"] if text_only else ["text", "audio"]),
                "voice": voice,
                "input_audio_format": input_format,
                "output_audio_format": output_format,
            }
            return {key: value for key, value in flat.items() if value is not None}
        session: dict[str, Any] = {"type": "realtime"}
        if text_only is not None:
            session["output_modalities"] = ["text"] if text_only else ["audio"]
        audio_in = {"format": GA_FORMATS[input_format]} if input_format else {}
        audio_out = {"format": GA_FORMATS[output_format]} if output_format else {}
        audio_out |= {"voice": voice} if voice is not None else {}
        audio = ({"input": audio_in} if audio_in else {}) | ({"output": audio_out} if audio_out else {})
        return session | ({"audio": audio} if audio else {})

    def update_session(self, **fields: Any) -> list[dict[str, Any]]:
        return self.send({"type": "session.update", "session": self.session_shape(**fields)})

    def assistant_text(self, text: str, item_id: str | None = None) -> dict[str, Any]:
        """A conversation.item.create of an assistant message with text content (GA output_text, beta
        text): what a response.create then says (scripted speech)."""
        part = {"type": self.pick(ga="output_text", beta="text"), "text": text}
        item: dict[str, Any] = {"type": "message", "role": "assistant", "content": [part]}
        return {"type": "conversation.item.create", "item": item | ({"id": item_id} if item_id else {})}

    def response_params(self, *, text_only: bool = False, max_tokens: int | None = None) -> dict[str, Any]:
        """A response.create's `response` in the dialect's shape."""
        params: dict[str, Any] = {}
        if text_only:
            params[self.pick(ga="output_modalities", beta="modalities")] = ["text"]
        if max_tokens is not None:
            params[self.pick(ga="max_output_tokens", beta="max_response_output_tokens")] = max_tokens
        return params

    def view(self, wire: dict[str, Any]) -> dict[str, Any]:
        """A session or response object's settings by dialect-neutral names; formats by their beta names
        (a GA format object must be exactly the one GA_FORMATS names)."""
        if not self.ga:
            names = {"input_audio_format": "input_format", "output_audio_format": "output_format"}
            view = {names.get(key, key): value for key, value in wire.items()}
            return view | {"text_only": wire.get("modalities") == ["text"]}
        audio = wire.get("audio", {})
        view = {key: value for key, value in wire.items() if key != "audio"}
        view |= {key: value for key, value in audio.get("input", {}).items() if key != "format"}
        view |= {key: value for key, value in audio.get("output", {}).items() if key != "format"}
        for key, where in (("input_format", "input"), ("output_format", "output")):
            if "format" in audio.get(where, {}):
                (view[key],) = [name for name, shape in GA_FORMATS.items() if shape == audio[where]["format"]]
        return view | {"text_only": wire.get("output_modalities") == ["text"]}

    def response_lifecycle(self, deltas: list[str]) -> list[str]:
        """The order every client accepts (docs/ARCHITECTURE.md, "Event order of a response")."""
        names = {
            "audio": self.name("response.output_audio.delta"),
            "text": self.name("response.output_audio_transcript.delta"),
        }
        return [
            "response.created",
            "response.output_item.added",
            self.announce_types[0],
            "response.content_part.added",
            *[names[d] for d in deltas],
            self.name("response.output_audio.done"),
            self.name("response.output_audio_transcript.done"),
            "response.content_part.done",
            "response.output_item.done",
            *self.item_done_types,
            "response.done",
        ]


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def only_error(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The single `error` a rejected client event must produce."""
    assert types_of(events) == ["error"], types_of(events)
    error: dict[str, Any] = events[0]["error"]
    return error


def speak(h: Harness, *pieces: str, silence: int = 3) -> list[dict[str, Any]]:
    """Moshi says one piece per frame, then `silence` non-speaking frames (3 end an utterance in FAST)."""
    events = []
    for piece in pieces:
        events += h.frame(speaking=True, text=piece)
    events += h.frames(silence, speaking=False)
    return events


def spoken_item(h: Harness, *pieces: str) -> str:
    """The id of the assistant item Moshi's utterance of `pieces` became."""
    events = speak(h, *pieces)
    return str(events[1]["item"]["id"])


def user_text(text: str, item_id: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text}],
    }
    return item | ({"id": item_id} if item_id else {})
