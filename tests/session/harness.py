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
from typing import Any, Union, get_args, get_origin

import numpy as np
from openai.types import realtime as ga
from openai.types.beta import realtime as beta
from pydantic import BaseModel

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.port import EngineFrame
from serve_app.protocol.dialect import Dialect
from serve_app.session.session import RealtimeSession
from serve_app.session.settings import SessionSettings


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


def _check_response(response: dict[str, Any], dialect: Dialect) -> None:
    for key in ("id", "object", "status", "status_details", "output", "usage", "metadata", "conversation_id"):
        assert key in response, (key, response)
    assert response["id"].startswith("resp_")
    assert response["object"] == "realtime.response"
    assert ("output_modalities" if dialect is Dialect.GA else "modalities") in response
    for item in response["output"]:
        _check_item(item)
        for part in item["content"]:
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


class Harness:
    """Drives one session; every drained event is strict-checked, and event ids must never repeat."""

    def __init__(
        self, dialect: Dialect, settings: SessionSettings | None = None, *, connect: bool = True
    ) -> None:
        self.dialect = dialect
        self.session = RealtimeSession(
            session_id="sess_test",
            model_id="moshi-sft",
            dialect=dialect,
            settings=settings or SessionSettings(),
            now_epoch_s=1_700_000_000,
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

    def clock(self, now_s: float) -> list[dict[str, Any]]:
        self.session.advance_clock(now_s)
        return self.events()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for text in self.session.data_to_send():
            event = strict_check(self.dialect, text)
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


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def only_error(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The single `error` a rejected client event must produce."""
    assert types_of(events) == ["error"], types_of(events)
    error: dict[str, Any] = events[0]["error"]
    return error
