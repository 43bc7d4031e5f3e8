"""Who Moshi speaks as: a prompted model's `voice` and `instructions`, checked when a client sets them and
fixed once the session's first audio goes to the model.

A prompted model (PersonaPlex: its traits name voices or say it follows instructions) hears its persona as
a prompt stepped before the conversation, so both are validated at session.update (an unknown voice is
an error naming the field and listing the model's voices) and fixed from the first audio on (a change
after that is an error naming the field). Its default voice and instructions come from the model's
config. A model without a prompt channel (stock Moshi, or traits None) keeps the echo: whatever is set
is accepted and echoed, never acted on (the voice lock there is session_update.py's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serve_app.engine.port import Persona
from serve_app.protocol.dialect import Dialect
from serve_app.protocol.errors import ClientError
from serve_app.session.config import SessionConfig
from serve_app.session.engine_requests import ApplyPersona, EngineRequests

if TYPE_CHECKING:  # serve_app.config imports the session's settings: keep the session free of it at runtime
    from serve_app.config import ModelTraits

__all__ = ["PersonaPrompt"]


class PersonaPrompt:
    def __init__(self, *, traits: ModelTraits | None, dialect: Dialect, requests: EngineRequests) -> None:
        self._voices = () if traits is None else tuple(traits.voices)
        self._follows_instructions = traits is not None and traits.follows_instructions
        self._default_voice = None if traits is None else traits.default_voice
        self._default_instructions = None if traits is None else traits.default_instructions
        self._voice_param = "session.audio.output.voice" if dialect is Dialect.GA else "session.voice"
        self._prompted = traits is not None and traits.prompt_channel
        self._requests = requests
        self.fixed = False
        """The persona went to the model (ahead of the first audio): it cannot change any more."""

    @property
    def prompted(self) -> bool:
        """The model hears a persona prompt (it has voices, or follows instructions)."""
        return self._prompted

    def defaults(self, config: SessionConfig) -> SessionConfig:
        """A new session's config with the model's default voice and instructions (where it has them)."""
        patch: dict[str, str] = {}
        if self._voices and self._default_voice is not None:
            patch["voice"] = self._default_voice
        if self._follows_instructions and self._default_instructions is not None:
            patch["instructions"] = self._default_instructions
        return config.model_copy(update=patch) if patch else config

    def check(self, current: SessionConfig, updated: SessionConfig) -> None:
        """Raise the `error` a session.update from `current` to `updated` gets, if any."""
        voice_changed = self._voices and updated.voice != current.voice
        if voice_changed and updated.voice_name not in self._voices:
            detail = (
                f"Unknown voice {updated.voice_name!r}: this model's voices are {', '.join(self._voices)}."
            )
            raise ClientError("invalid_session_update", param=self._voice_param, detail=detail)
        if not self.fixed:
            return
        if voice_changed:
            detail = "Cannot update the session's voice once audio was sent: the model was prompted with it."
            raise ClientError("invalid_session_update", param=self._voice_param, detail=detail)
        if self._follows_instructions and updated.instructions != current.instructions:
            detail = "Cannot update the session's instructions once audio was sent: the model was prompted."
            raise ClientError("invalid_session_update", param="session.instructions", detail=detail)

    def fix(self, config: SessionConfig) -> None:
        """The session's first audio is about to go to the model: ask for its persona first (once)."""
        if self.fixed or not self.prompted:
            return
        self.fixed = True
        voice = config.voice_name if config.voice_name in self._voices else None
        instructions = (config.instructions or None) if self._follows_instructions else None
        self._requests.put(ApplyPersona(Persona(voice=voice, instructions=instructions)))
