"""Transcription sessions: the rules in which they differ from a speech-to-speech session.

A transcription session (`?intent=transcription` on the URL) is live captions of the client's audio: it
holds no Moshi slot, creates no responses and sends no audio. Its input runs through the same concepts as
a speech-to-speech session's (input_audio.py: appends, commits, server VAD's turns; transcripts.py: the
ASR's results), so only its configuration and its face differ, and they live here:

- its session object: GA `session.created`/`session.updated` of type "transcription" (the SDK's
  `RealtimeTranscriptionSessionCreateRequest`); beta `session.created` then `transcription_session.updated`
  (the beta SDK has no `transcription_session.created` type, and its `TranscriptionSession` requires a
  `client_secret` and types the transcription model as a Literal of OpenAI's names);
- its updates: GA `session.update` of type "transcription", beta `transcription_session.update`, read by
  client_config.py's one table (audio.input.{format, transcription, turn_detection, noise_reduction});
- `include: ["item.input_audio_transcription.logprobs"]`: refused by name, since no ASR backend here
  reports logprobs;
- `response.create`: refused in words (a cancel or output clear keeps its usual answer: there is never a
  response to cancel).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from serve_app.protocol.dialect import Dialect
from serve_app.protocol.errors import ClientError
from serve_app.protocol.json_object import JsonObject
from serve_app.session.client_config import apply_transcription_update, ga_audio_input, session_object
from serve_app.session.config import SessionConfig, SessionKind, TurnDetection
from serve_app.session.events import ResponseCreate
from serve_app.session.settings import SessionSettings

LOGPROBS = "item.input_audio_transcription.logprobs"
BETA_TRANSCRIPTION_MODELS = frozenset(("gpt-4o-transcribe", "gpt-4o-mini-transcribe", "whisper-1"))
"""The only transcription models the beta `TranscriptionSession` type accepts in its echo."""


def updated_type(kind: SessionKind, dialect: Dialect) -> str:
    """The event that echoes an accepted update: beta has its own for a transcription session."""
    if kind is SessionKind.TRANSCRIPTION and dialect is Dialect.BETA:
        return "transcription_session.updated"
    return "session.updated"


def initial_config(
    kind: SessionKind,
    settings: SessionSettings,
    model: str | None,
    persona_defaults: Callable[[SessionConfig], SessionConfig],
) -> SessionConfig:
    """A new session's config. A speech-to-speech one takes its model's persona defaults (persona.py); a
    transcription one is text only, server VAD as configured, transcription on with `model` (the backend
    the URL named, or the server's default) so captions flow without any update."""
    realtime = SessionConfig.initial(settings)
    if kind is SessionKind.REALTIME:
        return persona_defaults(realtime)
    return realtime.model_copy(
        update={"audio_output": False, "transcription": {"model": model} if model else {}}
    )


def apply_update(dialect: Dialect, config: SessionConfig, session: BaseModel) -> SessionConfig:
    """The config after a transcription session's update; `include` asks for what no backend has."""
    include = getattr(session, "include", None)
    if include:
        wanted = ", ".join(repr(name) for name in include)
        detail = (
            f"session.include {wanted}: no transcription backend of this server reports logprobs "
            "or other extra fields; leave include empty."
            if LOGPROBS in include
            else f"session.include {wanted} is not a field this server can include; leave include empty."
        )
        raise ClientError("invalid_session_update", param="session.include", detail=detail)
    return apply_transcription_update(dialect, config, session)


def refuse_response(event: ResponseCreate) -> None:
    detail = (
        "This is a transcription session: it transcribes input audio and never creates responses. "
        "Connect without ?intent=transcription for a speech-to-speech session."
    )
    raise ClientError("invalid_event", param="type", detail=detail)


def refuse_other_update(dialect: Dialect) -> ClientError:
    """A speech-to-speech session.update in a transcription session (the kind is fixed at connect)."""
    if dialect is Dialect.GA:
        detail = "This is a transcription session: its session.update takes session.type 'transcription'."
        return ClientError("invalid_session_update", param="session.type", detail=detail)
    detail = "This is a transcription session: update it with transcription_session.update."
    return ClientError("invalid_session_update", param="type", detail=detail)


def echo(
    kind: SessionKind,
    dialect: Dialect,
    config: SessionConfig,
    session_id: str,
    model_id: str,
    expires_at: int,
) -> JsonObject:
    """The session object session.created / session.updated echo, for either kind of session."""
    if kind is SessionKind.REALTIME:
        return session_object(dialect, config, session_id, model_id, expires_at)
    return transcription_session_object(dialect, config, session_id, expires_at)


def transcription_session_object(
    dialect: Dialect, config: SessionConfig, session_id: str, expires_at: int
) -> JsonObject:
    """The complete transcription session object: GA's nested shape, or beta's flat one."""
    detection = None if config.turn_detection is None else _detection(config.turn_detection)
    if dialect is Dialect.GA:
        return {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": session_id,
            "expires_at": expires_at,
            "audio": {"input": ga_audio_input(config, detection)},
            "include": [],
        }
    return {
        "id": session_id,
        "object": "realtime.transcription_session",
        "expires_at": expires_at,
        "modalities": ["text"],
        "input_audio_format": config.input_format.value,
        "input_audio_transcription": _beta_transcription(config.transcription),
        "input_audio_noise_reduction": config.noise_reduction,
        "turn_detection": detection,
        "include": [],
        # Required by the beta SDK's TranscriptionSession although "not present when a session is updated
        # via the WebSocket API": no ephemeral key is minted here, so it is empty and expires with the
        # session.
        "client_secret": {"value": "", "expires_at": expires_at},
    }


def _detection(detection: TurnDetection) -> JsonObject:
    """Turn detection as a transcription session has it: no response to create or interrupt."""
    wire = detection.to_wire(with_idle_timeout=False)
    return {k: v for k, v in wire.items() if k not in ("create_response", "interrupt_response")}


def _beta_transcription(transcription: JsonObject | None) -> JsonObject | None:
    # Beta types the echoed model as a Literal of OpenAI's names: ours (the backends) stay out of it.
    if transcription is None:
        return None
    model: Any = transcription.get("model")
    return {k: v for k, v in transcription.items() if k != "model" or model in BETA_TRANSCRIPTION_MODELS}
