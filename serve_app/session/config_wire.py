"""SessionConfig ↔ the dialects' session objects: GA's nested one and beta's flat one.

Reading is lenient across shapes: a beta client that sends GA-shaped fields (audio.input.format,
output_modalities, ...) or a GA client that adds flat beta fields gets them honoured, each validated by
the SDK type of the shape it uses. When both shapes set the same thing, the session's own dialect wins.
`model` is never read: the URL fixed it, and the echo shows the effective one.
"""

from __future__ import annotations

from typing import Any

from openai.types import realtime as ga
from openai.types.beta.realtime import response_create_event as beta_response
from openai.types.beta.realtime import session_update_event as beta_update
from pydantic import BaseModel, ValidationError

from serve_app.protocol.client_events import explain
from serve_app.protocol.codecs import AudioFormat
from serve_app.protocol.dialect import Dialect
from serve_app.protocol.errors import ClientError
from serve_app.session.config import JsonObject, SessionConfig, TurnDetection

_GA_FORMATS = {
    "audio/pcm": AudioFormat.PCM16,
    "audio/pcmu": AudioFormat.G711_ULAW,
    "audio/pcma": AudioFormat.G711_ALAW,
}
_GA_ONLY_KEYS = ("audio", "output_modalities", "max_output_tokens")
_BETA_ONLY_KEYS = (
    "modalities",
    "voice",
    "speed",
    "temperature",
    "input_audio_format",
    "output_audio_format",
    "input_audio_transcription",
    "input_audio_noise_reduction",
    "turn_detection",
    "max_response_output_tokens",
)
_GA_EXTRA_KEYS = ("include", "prompt", "truncation", "parallel_tool_calls", "reasoning")


def apply_session_update(dialect: Dialect, config: SessionConfig, session: BaseModel) -> SessionConfig:
    """The config after a validated `session.update`'s session object; only present fields change."""
    foreign = session.model_extra or {}
    if dialect is Dialect.GA:
        borrowed = {key: foreign[key] for key in _BETA_ONLY_KEYS if key in foreign}
        if borrowed:
            config = _read_beta(config, _validate(beta_update.Session, borrowed))
        return _read_ga(config, session)
    borrowed = {key: foreign[key] for key in _GA_ONLY_KEYS if key in foreign}
    if borrowed:
        config = _read_ga(
            config, _validate(ga.RealtimeSessionCreateRequest, {"type": "realtime", **borrowed})
        )
    return _read_beta(config, session)


_GA_RESPONSE_ONLY_KEYS = ("audio", "output_modalities", "max_output_tokens")
_BETA_RESPONSE_ONLY_KEYS = (
    "modalities",
    "voice",
    "output_audio_format",
    "temperature",
    "max_response_output_tokens",
)


def borrowed_response_params(dialect: Dialect, params: BaseModel) -> BaseModel | None:
    """A `response.create`'s fields in the other dialect's shape (the SDK types keep them as unvalidated
    extras), validated by that dialect's SDK type, as `apply_session_update` does for sessions."""
    foreign = params.model_extra or {}
    keys = _BETA_RESPONSE_ONLY_KEYS if dialect is Dialect.GA else _GA_RESPONSE_ONLY_KEYS
    borrowed = {key: foreign[key] for key in keys if key in foreign}
    if not borrowed:
        return None
    model = beta_response.Response if dialect is Dialect.GA else ga.RealtimeResponseCreateParams
    return _validate(model, borrowed, code="invalid_event", prefix="response")


def _validate(
    model: type[BaseModel], data: JsonObject, *, code: str = "invalid_session_update", prefix: str = "session"
) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        param, message = explain(model, data, exc)
        raise ClientError(code, param=f"{prefix}.{param}", detail=message) from None


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, list):
        return [_dump(item) for item in value]
    return value


def _set(model: BaseModel | None, field: str) -> bool:
    return model is not None and field in model.model_fields_set


def _read_ga(config: SessionConfig, session: BaseModel) -> SessionConfig:
    s: Any = session
    patch: JsonObject = {}
    if _set(s, "instructions"):
        patch["instructions"] = s.instructions or ""
    if _set(s, "output_modalities") and s.output_modalities is not None:
        patch["audio_output"] = "audio" in s.output_modalities
    if _set(s, "max_output_tokens") and s.max_output_tokens is not None:
        patch["max_output_tokens"] = s.max_output_tokens
    if _set(s, "tools"):
        patch["tools"] = _dump(s.tools or [])
    if _set(s, "tool_choice") and s.tool_choice is not None:
        patch["tool_choice"] = _dump(s.tool_choice)
    if _set(s, "tracing"):
        patch["tracing"] = _dump(s.tracing)
    extras = {key: _dump(getattr(s, key)) for key in _GA_EXTRA_KEYS if _set(s, key)}
    if extras:
        patch["ga_extras"] = {**config.ga_extras, **extras}
    audio: Any = s.audio if _set(s, "audio") else None
    audio_in: Any = audio.input if _set(audio, "input") else None
    audio_out: Any = audio.output if _set(audio, "output") else None
    if _set(audio_in, "format") and audio_in.format is not None:
        patch["input_format"] = format_from_ga(audio_in.format, param="session.audio.input.format")
    if _set(audio_in, "turn_detection"):
        detection = audio_in.turn_detection
        patch["turn_detection"] = None if detection is None else TurnDetection.from_wire(_dump(detection))
    if _set(audio_in, "transcription"):
        patch["transcription"] = _dump(audio_in.transcription)
    if _set(audio_in, "noise_reduction"):
        patch["noise_reduction"] = _dump(audio_in.noise_reduction)
    if _set(audio_out, "format") and audio_out.format is not None:
        patch["output_format"] = format_from_ga(audio_out.format, param="session.audio.output.format")
    if _set(audio_out, "voice") and audio_out.voice is not None:
        patch["voice"] = _dump(audio_out.voice)
    if _set(audio_out, "speed") and audio_out.speed is not None:
        patch["speed"] = audio_out.speed
    return config.model_copy(update=patch)


def _read_beta(config: SessionConfig, session: BaseModel) -> SessionConfig:
    s: Any = session
    patch: JsonObject = {}
    if _set(s, "instructions"):
        patch["instructions"] = s.instructions or ""
    if _set(s, "modalities") and s.modalities is not None:
        patch["audio_output"] = "audio" in s.modalities
    if _set(s, "voice") and s.voice is not None:
        patch["voice"] = s.voice
    if _set(s, "speed") and s.speed is not None:
        patch["speed"] = s.speed
    if _set(s, "temperature") and s.temperature is not None:
        patch["temperature"] = s.temperature
    if _set(s, "input_audio_format") and s.input_audio_format is not None:
        patch["input_format"] = AudioFormat(s.input_audio_format)
    if _set(s, "output_audio_format") and s.output_audio_format is not None:
        patch["output_format"] = AudioFormat(s.output_audio_format)
    if _set(s, "turn_detection"):
        detection = s.turn_detection
        patch["turn_detection"] = None if detection is None else TurnDetection.from_wire(_dump(detection))
    if _set(s, "input_audio_transcription"):
        patch["transcription"] = _dump(s.input_audio_transcription)
    if _set(s, "input_audio_noise_reduction"):
        patch["noise_reduction"] = _dump(s.input_audio_noise_reduction)
    if _set(s, "tools"):
        patch["tools"] = _dump(s.tools or [])
    if _set(s, "tool_choice") and s.tool_choice is not None:
        patch["tool_choice"] = s.tool_choice
    if _set(s, "max_response_output_tokens") and s.max_response_output_tokens is not None:
        patch["max_output_tokens"] = s.max_response_output_tokens
    if _set(s, "tracing"):
        patch["tracing"] = _dump(s.tracing)
    return config.model_copy(update=patch)


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


def session_object(
    dialect: Dialect, config: SessionConfig, *, session_id: str, model_id: str, expires_at: int
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
                "input": {
                    "format": ga_format(config.input_format),
                    "transcription": config.transcription,
                    "noise_reduction": config.noise_reduction,
                    "turn_detection": None
                    if detection is None
                    else detection.to_wire(with_idle_timeout=True),
                },
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
