"""session.update (and beta's transcription_session.update): the rules a client's update passes before
the session takes the config it asks for.

- The session's kind is fixed at connect (the URL's `?intent=transcription`): an update of the other kind
  is refused, naming where each kind is asked for (transcription_session.py for that kind's rules).
- A prompted model's persona: an unknown voice, or a change once the model was prompted (persona.py).
- The voice lock: a conversation that already has assistant audio keeps its voice.

`updated_config` returns the config the session takes, or raises the ClientError the client gets; the
session applies it (input format, echo), so this module holds rules and no state.
"""

from __future__ import annotations

from serve_app.protocol.dialect import Dialect
from serve_app.protocol.errors import ClientError
from serve_app.session import events as ev
from serve_app.session import transcription_session as transcription
from serve_app.session.client_config import apply_session_update
from serve_app.session.config import SessionConfig, SessionKind
from serve_app.session.persona import PersonaPrompt

__all__ = ["updated_config"]


def updated_config(
    event: ev.SessionUpdate | ev.TranscriptionSessionUpdate,
    *,
    dialect: Dialect,
    kind: SessionKind,
    config: SessionConfig,
    persona: PersonaPrompt,
    audio_sent: bool,
) -> SessionConfig:
    """The config after `event`, from `config`; `audio_sent`: assistant audio is in the conversation."""
    transcribing = kind is SessionKind.TRANSCRIPTION
    if isinstance(event, ev.TranscriptionSessionUpdate):  # beta's own event for a transcription session
        if not transcribing:
            detail = (
                "This is a speech-to-speech session; a transcription session is asked for on the URL "
                "(?intent=transcription), then configured with transcription_session.update."
            )
            raise ClientError("invalid_session_update", param="type", detail=detail)
        return transcription.apply_update(dialect, config, event.session)
    asks_transcription = getattr(event.session, "type", None) == "transcription"
    if transcribing:
        if not asks_transcription:
            raise transcription.refuse_other_update(dialect)
        return transcription.apply_update(dialect, config, event.session)
    if asks_transcription:
        detail = (
            "This is a speech-to-speech session; a transcription session is asked for on the URL "
            "(?intent=transcription) and has session.type 'transcription' from the start."
        )
        raise ClientError("invalid_session_update", param="session.type", detail=detail)
    updated = apply_session_update(dialect, config, event.session)
    persona.check(config, updated)
    if audio_sent and updated.voice != config.voice:  # the voice lock, on any model
        param = "session.audio.output.voice" if dialect is Dialect.GA else "session.voice"
        detail = "Cannot update a conversation's voice if assistant audio is present."
        raise ClientError("invalid_session_update", param=param, detail=detail)
    return updated
