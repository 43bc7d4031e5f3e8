"""What a client configures, read from and echoed in either dialect's shape.

session.update's session object becomes a SessionConfig, response.create's `response` the
ResponseOptions of that response, and session.created / session.updated echo the session object back.

The dialects name the same settings differently (GA nests the audio ones under audio.input / .output,
beta spells them flat), so one table, `_FIELDS`, says where each setting sits in each shape, and one
reader walks it for either shape. Reading is lenient across shapes: a beta client that sends GA-shaped
fields (audio.input.format, output_modalities, ...) or a GA client that adds flat beta fields gets them
honoured, each validated by the SDK type of the shape it uses. When both shapes set the same thing, the
session's own dialect wins. `model` is never read: the URL fixed it, and the echo shows the effective one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from openai.types import realtime as ga
from openai.types.beta.realtime import response_create_event as beta_response
from openai.types.beta.realtime import session_update_event as beta_update
from openai.types.beta.realtime import transcription_session_update as beta_transcription
from pydantic import BaseModel, ValidationError

from serve_app.protocol.client_events import explain
from serve_app.protocol.codecs import AudioFormat
from serve_app.protocol.dialect import Dialect
from serve_app.protocol.errors import ClientError
from serve_app.protocol.json_object import JsonObject
from serve_app.session.config import ResponseOptions, SessionConfig, TurnDetection

_GA_FORMATS = {
    "audio/pcm": AudioFormat.PCM16,
    "audio/pcmu": AudioFormat.G711_ULAW,
    "audio/pcma": AudioFormat.G711_ALAW,
}
_GA_EXTRA_KEYS = ("include", "prompt", "truncation", "parallel_tool_calls", "reasoning")

Subject = Literal["session", "response", "transcription"]
"""What is read: a session.update's `session`, a response.create's `response`, or the session object of
a transcription session's update (GA session.update of type "transcription", beta
transcription_session.update)."""


def _same(value: Any, param: str) -> Any:
    return value


def _dump(value: Any, param: str = "") -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, list):
        return [_dump(item) for item in value]
    return value


def _format(value: Any, param: str) -> AudioFormat:
    # Beta names a format with a string, GA with an object.
    return AudioFormat(value) if isinstance(value, str) else format_from_ga(value, param=param)


def _turn_detection(value: Any, param: str) -> TurnDetection | None:
    return None if value is None else TurnDetection.from_wire(_dump(value))


@dataclass(frozen=True, slots=True)
class _Field:
    """Where one setting sits in each shape (an attribute path; None: the shape has no such field) and
    how its value reads. An explicit null is "not given", unless it `clears` the setting."""

    name: str
    ga: tuple[str, ...] | None
    beta: tuple[str, ...] | None
    read: Callable[[Any, str], Any] = _same
    clears: bool = False


_FIELDS = (
    _Field("instructions", ("instructions",), ("instructions",), lambda v, _: v or "", clears=True),
    _Field("audio_output", ("output_modalities",), ("modalities",), lambda v, _: "audio" in v),
    _Field("max_output_tokens", ("max_output_tokens",), ("max_response_output_tokens",)),
    _Field("tools", ("tools",), ("tools",), lambda v, _: _dump(v or []), clears=True),
    _Field("tool_choice", ("tool_choice",), ("tool_choice",), _dump),
    _Field("tracing", ("tracing",), ("tracing",), _dump, clears=True),
    _Field("input_format", ("audio", "input", "format"), ("input_audio_format",), _format),
    _Field(
        "turn_detection",
        ("audio", "input", "turn_detection"),
        ("turn_detection",),
        _turn_detection,
        clears=True,
    ),
    _Field(
        "transcription",
        ("audio", "input", "transcription"),
        ("input_audio_transcription",),
        _dump,
        clears=True,
    ),
    _Field(
        "noise_reduction",
        ("audio", "input", "noise_reduction"),
        ("input_audio_noise_reduction",),
        _dump,
        clears=True,
    ),
    _Field("output_format", ("audio", "output", "format"), ("output_audio_format",), _format),
    _Field("voice", ("audio", "output", "voice"), ("voice",), _dump),
    _Field("speed", ("audio", "output", "speed"), ("speed",)),
    _Field("temperature", None, ("temperature",)),
    _Field("metadata", ("metadata",), ("metadata",)),
)
_READS: dict[Subject, frozenset[str]] = {
    "session": frozenset(field.name for field in _FIELDS) - {"metadata"},
    "response": frozenset(
        ("audio_output", "output_format", "voice", "max_output_tokens", "temperature", "metadata")
    ),
    "transcription": frozenset(("input_format", "turn_detection", "transcription", "noise_reduction")),
}
_SDK_TYPES: dict[Subject, dict[Dialect, type[BaseModel]]] = {
    "session": {Dialect.GA: ga.RealtimeSessionCreateRequest, Dialect.BETA: beta_update.Session},
    "response": {Dialect.GA: ga.RealtimeResponseCreateParams, Dialect.BETA: beta_response.Response},
    "transcription": {
        Dialect.GA: ga.RealtimeTranscriptionSessionCreateRequest,
        Dialect.BETA: beta_transcription.Session,
    },
}
_ERROR_CODES: dict[Subject, str] = {
    "session": "invalid_session_update",
    "response": "invalid_event",
    "transcription": "invalid_session_update",
}
_PARAM_ROOTS: dict[Subject, str] = {"session": "session", "response": "response", "transcription": "session"}
"""Where a subject sits in the client's event (what an error's `param` starts with)."""
_GA_SESSION_TYPES: dict[type[BaseModel], str] = {
    ga.RealtimeSessionCreateRequest: "realtime",
    ga.RealtimeTranscriptionSessionCreateRequest: "transcription",
}
"""The GA session union's discriminator, for fields a beta client borrows in the GA shape."""


def apply_session_update(dialect: Dialect, config: SessionConfig, session: BaseModel) -> SessionConfig:
    """The config after a validated `session.update`'s session object; only present fields change."""
    patch = _read_both_shapes(dialect, session, "session")
    if dialect is Dialect.GA:
        extras = {key: _dump(getattr(session, key)) for key in _GA_EXTRA_KEYS if _given(session, key)}
        if extras:
            patch["ga_extras"] = {**config.ga_extras, **extras}
    return config.model_copy(update=patch)


def apply_transcription_update(dialect: Dialect, config: SessionConfig, session: BaseModel) -> SessionConfig:
    """A transcription session's config after a validated update (GA session.update of type
    "transcription", beta transcription_session.update); only present fields change."""
    return config.model_copy(update=_read_both_shapes(dialect, session, "transcription"))


def response_options(
    dialect: Dialect, config: SessionConfig, conversation_id: str, params: BaseModel | None
) -> ResponseOptions:
    """Session defaults, overridden by what a response.create asked for where Moshi can honour it."""
    patch = {} if params is None else _read_both_shapes(dialect, params, "response")
    return ResponseOptions(
        conversation_id=conversation_id,
        audio_output=patch.get("audio_output", config.audio_output),
        output_format=patch.get("output_format", config.output_format),
        voice=patch.get("voice", config.voice),
        temperature=patch.get("temperature", config.temperature),
        max_output_tokens=patch.get("max_output_tokens", config.max_output_tokens),
        metadata=patch.get("metadata"),
    )


def _read_both_shapes(dialect: Dialect, model: BaseModel, subject: Subject) -> JsonObject:
    """The settings `model` gives, in its dialect's shape and (from its unvalidated extras) the other's;
    the dialect's own shape wins."""
    other = Dialect.BETA if dialect is Dialect.GA else Dialect.GA
    foreign = model.model_extra or {}
    borrowed = {key: foreign[key] for key in _only_in(other, subject) if key in foreign}
    patch: JsonObject = {}
    if borrowed:
        sdk_type = _SDK_TYPES[subject][other]
        if sdk_type in _GA_SESSION_TYPES:
            borrowed = {"type": _GA_SESSION_TYPES[sdk_type], **borrowed}
        root = _PARAM_ROOTS[subject]
        patch = _read(_validate(sdk_type, borrowed, code=_ERROR_CODES[subject], prefix=root), other, subject)
    return patch | _read(model, dialect, subject)


def _read(model: BaseModel, shape: Dialect, subject: Subject) -> JsonObject:
    patch: JsonObject = {}
    for field in _FIELDS:
        path = field.ga if shape is Dialect.GA else field.beta
        if path is None or field.name not in _READS[subject]:
            continue
        value: Any = model
        for step in path:
            value = getattr(value, step) if _given(value, step) else _ABSENT
        if value is _ABSENT or (value is None and not field.clears):
            continue
        patch[field.name] = field.read(value, ".".join((_PARAM_ROOTS[subject], *path)))
    return patch


_ABSENT: Any = object()


def _given(model: Any, name: str) -> bool:
    return isinstance(model, BaseModel) and name in model.model_fields_set


def _only_in(shape: Dialect, subject: Subject) -> list[str]:
    """Top-level keys of `shape` the other dialect's shape lacks (what a client may borrow from it)."""
    other = Dialect.BETA if shape is Dialect.GA else Dialect.GA
    own, theirs = _heads(shape, subject), set(_heads(other, subject))
    return [key for key in own if key not in theirs]


def _heads(shape: Dialect, subject: Subject) -> list[str]:
    paths = (
        field.ga if shape is Dialect.GA else field.beta for field in _FIELDS if field.name in _READS[subject]
    )
    return list(dict.fromkeys(path[0] for path in paths if path is not None))


def _validate(model: type[BaseModel], data: JsonObject, *, code: str, prefix: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        param, message = explain(model, data, exc)
        raise ClientError(code, param=f"{prefix}.{param}", detail=message) from None


def format_from_ga(audio_format: BaseModel, *, param: str) -> AudioFormat:
    """A GA format object. Its `type` is optional in the SDK, and a bare {"rate": 16000} validates as
    one of the G.711 members with `rate` as an extra, so the rate is checked here."""
    fields: Any = audio_format
    kind = fields.type or "audio/pcm"
    rate = getattr(fields, "rate", None) or (audio_format.model_extra or {}).get("rate")
    if kind == "audio/pcm" and rate not in (None, 24000):
        raise ClientError(
            "invalid_session_update",
            param=f"{param}.rate",
            detail=f"Only 24000 Hz PCM audio is supported (got rate {rate!r}).",
        )
    return _GA_FORMATS[kind]


def ga_format(audio_format: AudioFormat) -> JsonObject:
    if audio_format is AudioFormat.PCM16:
        return {"type": "audio/pcm", "rate": 24000}
    return {"type": "audio/pcmu" if audio_format is AudioFormat.G711_ULAW else "audio/pcma"}


def ga_audio_input(config: SessionConfig, turn_detection: JsonObject | None) -> JsonObject:
    """GA's session.audio.input echo, as both kinds of session have it (each wires its turn detection)."""
    return {
        "format": ga_format(config.input_format),
        "transcription": config.transcription,
        "noise_reduction": config.noise_reduction,
        "turn_detection": turn_detection,
    }


def session_object(
    dialect: Dialect, config: SessionConfig, session_id: str, model_id: str, expires_at: int
) -> JsonObject:
    """The complete session object for session.created / session.updated."""
    detection = config.turn_detection
    if dialect is Dialect.GA:
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": session_id,
            "model": model_id,
            "expires_at": expires_at,
            "output_modalities": ["audio"] if config.audio_output else ["text"],
            "instructions": config.instructions,
            "audio": {
                "input": ga_audio_input(
                    config, None if detection is None else detection.to_wire(with_idle_timeout=True)
                ),
                "output": {
                    "format": ga_format(config.output_format),
                    "voice": config.voice,
                    "speed": config.speed,
                },
            },
            "tools": config.tools,
            "tool_choice": config.tool_choice,
            "max_output_tokens": config.max_output_tokens,
            "tracing": config.tracing,
            **config.ga_extras,
        }
    # Beta types `model` as a Literal of OpenAI's model names, so a beta session object cannot carry ours.
    return {
        "id": session_id,
        "object": "realtime.session",
        "expires_at": expires_at,
        "modalities": ["text", "audio"] if config.audio_output else ["text"],
        "instructions": config.instructions,
        "voice": config.voice_name,
        "speed": config.speed,
        "temperature": config.temperature,
        "input_audio_format": config.input_format.value,
        "output_audio_format": config.output_format.value,
        "input_audio_transcription": config.transcription,
        "input_audio_noise_reduction": config.noise_reduction,
        "turn_detection": None if detection is None else detection.to_wire(with_idle_timeout=False),
        "tools": config.tools,
        "tool_choice": config.tool_choice if isinstance(config.tool_choice, str) else "auto",
        "max_response_output_tokens": config.max_output_tokens,
        "tracing": config.tracing,
    }
