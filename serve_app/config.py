"""The one typed configuration, loaded from the Serve YAML `args` (or built for the embedded default)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.asr.config import AsrConfig
from serve_app.constants import FRAME_MS
from serve_app.delegate.config import DelegateConfig
from serve_app.engine.port import Persona
from serve_app.engine.spec import ModelConfig, ModelSpec, RealtimeLimits
from serve_app.engine.voice_names import default_voice
from serve_app.session.settings import SessionSettings

# Seeds for the embedded default: one tiny random-weight checkpoint per model type.
EMBEDDED_MODELS: dict[str, int] = {"moshi-sft": 1, "moshi-base": 2, "moshi-pretrain": 3, "personaplex": 4}
EMBEDDED_PERSONA_MODEL = "personaplex"
"""The embedded default's persona-capable model: a tiny PersonaPlex-shaped checkpoint (voices, role text)."""
EMBEDDED_PERSONA_SLOTS = 2

__all__ = [
    "NO_PROMPT",
    "AppConfig",
    "ModelConfig",
    "ModelTraits",
    "RealtimeLimits",
    "ServerSettings",
    "load_config",
    "model_traits",
]


@dataclass(frozen=True)
class ModelTraits:
    """What the ingress knows of a model without loading it: what its sessions may ask of it."""

    follows_instructions: bool
    """`instructions` become the model's role text (PersonaPlex); otherwise they are only echoed."""
    voices: tuple[str, ...]
    """The voice prompts a session's `voice` may name; empty: no voice prompt (the voice is echoed)."""
    default_voice: str | None
    default_instructions: str | None
    random_weights: bool
    """A generated tiny checkpoint: it answers with noise (clients say so)."""

    @property
    def prompt_channel(self) -> bool:
        """The model takes a persona before its first step (`SlotStream.set_persona`)."""
        return self.follows_instructions or bool(self.voices)

    def persona(self, persona: Persona) -> Persona:
        """`persona` with the model's defaults where it leaves the voice or the role text unset."""
        return Persona(
            voice=persona.voice or self.default_voice,
            instructions=persona.instructions or self.default_instructions,
        )


NO_PROMPT = ModelTraits(
    follows_instructions=False, voices=(), default_voice=None, default_instructions=None, random_weights=False
)
"""A model without a prompt channel (a streaming ASR's, or one known only by its id)."""


def model_traits(model: ModelConfig) -> ModelTraits:
    """The traits of a configured model, from its spec: a PersonaPlex follows instructions and has voices."""
    voices = model.persona_voices()
    persona = model.spec.persona
    return ModelTraits(
        follows_instructions=persona,
        voices=voices,
        default_voice=(model.default_voice or default_voice(voices)) if persona else None,
        default_instructions=model.default_instructions if persona else None,
        random_weights=model.spec.tiny_seed is not None,
    )


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dialect: Literal["auto", "ga", "beta"] = "auto"
    """Force a dialect for clients that cannot send the beta header; `auto` detects per connection."""

    api_keys: tuple[str, ...] = ()
    """When non-empty every socket must present one of these keys. REALTIME_API_KEYS adds to it."""

    client_secret_signing_key: str | None = None
    """Signs the `ek_` client secrets (serve_app/server/client_secrets.py); else REALTIME_CLIENT_SECRET_KEY,
    else derived from the API keys. Changing it (or the keys it is derived from) revokes every `ek_` key."""

    clock_interval_s: float = Field(default=0.1, gt=0, le=1)
    """How often the socket shell advances the session clock (drives response timeouts)."""

    max_loop_lag_ms: float | None = Field(default=100, gt=0)
    """The ingress refuses new sessions (`server_at_capacity`) while its event loop ran callbacks this
    late in the last 2 s (more than twice): every session on that loop would be late too. null disables
    the check."""

    max_vad_lag_ms: float | None = Field(default=500, gt=0)
    """New sessions are refused (`server_at_capacity`) while the ingress's VAD thread is this late with
    the input it judges (None: never): past it, speech events would trail the audio."""

    allowed_origins: tuple[str, ...] = ()
    """When non-empty, a socket whose `Origin` header (browsers send one) is not listed is refused with
    `origin_not_allowed` (close 1008), so other web pages cannot use a visitor's network position; clients
    that send no Origin (SDKs, servers) are not affected. Exact matches, e.g. "https://app.example.com"."""

    max_sessions_per_key: int | None = Field(default=16, ge=1)
    """Concurrent sessions one API key may hold on this ingress replica (`too_many_sessions`, close 1008);
    applies when API keys are configured. null: no cap."""

    send_queue_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    """Server events a socket may have waiting to be sent, in bytes (docs/ARCHITECTURE.md, "Limits")."""

    send_queue_audio_ms: int = Field(default=5000, ge=FRAME_MS)
    """… and in audio deltas (80 ms each): past either bound the client is not reading, and its session
    ends with `client_too_slow`."""

    ping_interval_s: float = Field(default=4.0, gt=0)
    """WebSocket keepalive ping interval. A client that stops reading stops answering pings too: its
    socket is closed `ping_timeout_s` after the next ping (≤ 8 s by default), however much of its
    audio the buffers between us and it still hold (serve_app/server/keepalive.py)."""

    ping_timeout_s: float = Field(default=4.0, gt=0)

    send_timeout_s: float = Field(default=5.0, gt=0)
    """Longest a single send may wait for the client's socket to drain before the session ends the same
    way."""

    webrtc_connect_timeout_s: float = Field(default=30.0, gt=0)
    """A WebRTC call whose peer connection has not connected this long after its answer is ended and its
    slot freed (a client that never completes ICE)."""

    webrtc_ice_servers: tuple[dict[str, str], ...] = ()
    """STUN/TURN servers for WebRTC calls, as RTCIceServer fields ({"urls", "username", "credential"});
    empty: host candidates only (docs/ARCHITECTURE.md, "WebRTC calls")."""

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    def effective_api_keys(self) -> frozenset[str]:
        env = os.environ.get("REALTIME_API_KEYS", "")
        return frozenset(self.api_keys) | {k.strip() for k in env.split(",") if k.strip()}


class AppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[ModelConfig, ...]
    server: ServerSettings = ServerSettings()
    session: SessionSettings = SessionSettings()
    asr: AsrConfig = AsrConfig()
    """Input transcription backends (the ASR deployment); the embedded default is pocketsphinx."""
    delegate: DelegateConfig | None = None
    """The server-wide delegate (serve_app/delegate/): given to every model that names none of its own."""

    @model_validator(mode="after")
    def _unique_ids(self) -> AppConfig:
        ids = [m.id for m in self.models]
        if not ids:
            raise ValueError("at least one model must be configured")
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate model ids: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _server_wide_delegate(self) -> AppConfig:
        """Each model without a delegate of its own gets the server-wide one: `ModelConfig.delegate` is then
        the one place a replica or a session reads it."""
        if self.delegate is None or all(m.delegate is not None for m in self.models):
            return self
        models = tuple(
            m if m.delegate else m.model_copy(update={"delegate": self.delegate}) for m in self.models
        )
        object.__setattr__(self, "models", models)  # frozen: set once, during validation
        return self

    def model(self, model_id: str) -> ModelConfig | None:
        return next((m for m in self.models if m.id == model_id), None)

    def traits(self, model_id: str) -> ModelTraits | None:
        model = self.model(model_id)
        return model_traits(model) if model is not None else None

    @classmethod
    def embedded_default(cls, slots: int = 8) -> AppConfig:
        """Tiny random-weight checkpoints, generated on first use: runs anywhere, sounds like noise."""
        return cls(
            models=tuple(
                ModelConfig(id=name, spec=ModelSpec(tiny_seed=seed), slots=slots)
                if name != EMBEDDED_PERSONA_MODEL
                else ModelConfig(
                    id=name,
                    spec=ModelSpec(tiny_seed=seed, tiny_kind="personaplex"),
                    slots=min(slots, EMBEDDED_PERSONA_SLOTS),
                )
                for name, seed in EMBEDDED_MODELS.items()
            )
        )


def load_config(args: dict[str, Any]) -> AppConfig:
    """The AppConfig of a Serve application's `args`: without `models`, the embedded default models
    with any other settings applied."""
    from_env = DelegateConfig.from_env()
    if from_env is not None and "delegate" not in args:
        # REALTIME_DELEGATE_URL/_MODEL/_MODE: a server-wide delegate for `make serve` without editing YAML.
        args = {**args, "delegate": from_env.model_dump(mode="json")}
    if "models" in args:
        return AppConfig.model_validate(args)
    default = AppConfig.embedded_default()
    return AppConfig.model_validate({**default.model_dump(mode="json"), **args})
