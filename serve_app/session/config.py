"""The configuration a client sees and sets, in one dialect-neutral form: the session's (session.update)
and each response's (session defaults + response.create overrides).

Moshi honours the audio formats and output modality, and a prompted model (PersonaPlex) the instructions
and voice (persona.py); the rest (tools, sampling, transcription and turn-detection parameters, and on stock
Moshi instructions and voice) is kept and echoed so clients that set it keep working.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict

from serve_app.protocol.codecs import AudioFormat
from serve_app.protocol.json_object import JsonObject
from serve_app.session.settings import SessionSettings


def voice_name(voice: str | dict[str, str]) -> str:
    """The voice as a plain string: GA also allows a custom voice object {id}."""
    return voice if isinstance(voice, str) else voice.get("id", "")


class SessionKind(StrEnum):
    """What a session is, fixed when it connects (the URL says): it decides what the session holds."""

    REALTIME = "realtime"
    """Speech to speech: a Moshi slot, responses, audio out."""
    TRANSCRIPTION = "transcription"
    """Input transcription only (`?intent=transcription`): an ASR slot or queue place, no Moshi, no
    responses, no audio out (transcription_session.py)."""


class TurnDetection(BaseModel):
    """Both dialects spell turn detection with the same keys (GA nests it under audio.input)."""

    model_config = ConfigDict(frozen=True)

    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    idle_timeout_ms: int | None = None
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    create_response: bool = True
    interrupt_response: bool = True

    @classmethod
    def from_wire(cls, wire: JsonObject) -> TurnDetection:
        """Unset parameters take the hosted service's documented defaults for the chosen type."""
        given = {key: value for key, value in wire.items() if value is not None and key in cls.model_fields}
        if given.get("type", "server_vad") == "server_vad":
            defaults: JsonObject = {"threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}
        else:
            defaults = {"eagerness": "auto"}
        return cls.model_validate({**defaults, **given})

    def to_wire(self, *, with_idle_timeout: bool) -> JsonObject:
        wire: JsonObject = {"type": self.type}
        if self.type == "server_vad":
            wire |= {
                "threshold": self.threshold,
                "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms,
            }
            if with_idle_timeout and self.idle_timeout_ms is not None:
                wire["idle_timeout_ms"] = self.idle_timeout_ms
        else:
            wire["eagerness"] = self.eagerness
        return wire | {"create_response": self.create_response, "interrupt_response": self.interrupt_response}


class SessionConfig(BaseModel):
    """The effective configuration; session.updated always echoes all of it."""

    model_config = ConfigDict(frozen=True)

    instructions: str = ""
    audio_output: bool = True
    """GA output_modalities ["audio"] / beta modalities ["text", "audio"]; False is text only."""
    input_format: AudioFormat = AudioFormat.PCM16
    output_format: AudioFormat = AudioFormat.PCM16
    voice: str | dict[str, str] = "alloy"
    speed: float = 1.0
    turn_detection: TurnDetection | None = None
    transcription: JsonObject | None = None
    noise_reduction: JsonObject | None = None
    tools: list[JsonObject] = []
    tool_choice: str | JsonObject = "auto"
    temperature: float = 0.8
    max_output_tokens: int | Literal["inf"] = "inf"
    tracing: str | JsonObject | None = None
    ga_extras: JsonObject = {}
    """GA-only fields Moshi has no use for (include, prompt, truncation, parallel_tool_calls, reasoning)."""

    @classmethod
    def initial(cls, settings: SessionSettings) -> SessionConfig:
        detection = settings.default_turn_detection
        return cls(
            instructions=settings.default_instructions,
            voice=settings.default_voice,
            turn_detection=(
                None
                if detection is None
                else TurnDetection.from_wire(
                    {"type": detection, "interrupt_response": settings.default_interrupt_response}
                )
            ),
        )

    @property
    def voice_name(self) -> str:
        return voice_name(self.voice)


@dataclass(frozen=True, slots=True)
class ResponseOptions:
    """What a response echoes, fixed when it is created (session config + response.create overrides)."""

    conversation_id: str
    audio_output: bool
    output_format: AudioFormat
    voice: str | dict[str, str]
    temperature: float
    max_output_tokens: int | Literal["inf"]
    metadata: dict[str, str] | None = None

    @property
    def voice_name(self) -> str:
        # Response objects type voice as a string in both dialects (no custom {id} object).
        return voice_name(self.voice)
