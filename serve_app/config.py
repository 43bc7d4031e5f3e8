"""The one typed configuration, loaded from the Serve YAML `args` (or built for the embedded default)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.engine.spec import ModelSpec, SamplingParams
from serve_app.session.settings import SessionSettings

# Seeds for the embedded default: one tiny random-weight checkpoint per model type.
EMBEDDED_MODELS: dict[str, int] = {"moshi-sft": 1, "moshi-base": 2, "moshi-pretrain": 3}


class ModelConfig(BaseModel):
    """One model type: its weights, how many sessions a replica batches, how it samples."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    spec: ModelSpec
    slots: int = Field(default=8, ge=1, le=1024)
    sampling: SamplingParams = SamplingParams()


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dialect: Literal["auto", "ga", "beta"] = "auto"
    """Force a dialect for clients that cannot send the beta header; `auto` detects per connection."""

    api_keys: tuple[str, ...] = ()
    """When non-empty every socket must present one of these keys. REALTIME_API_KEYS adds to it."""

    clock_interval_s: float = Field(default=0.1, gt=0, le=1)
    """How often the socket shell advances the session clock (drives response timeouts)."""

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

    @model_validator(mode="after")
    def _unique_ids(self) -> AppConfig:
        ids = [m.id for m in self.models]
        if not ids:
            raise ValueError("at least one model must be configured")
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate model ids: {', '.join(dupes)}")
        return self

    def model(self, model_id: str) -> ModelConfig | None:
        return next((m for m in self.models if m.id == model_id), None)

    @classmethod
    def embedded_default(cls, slots: int = 8) -> AppConfig:
        """Tiny random-weight checkpoints, generated on first use: runs anywhere, sounds like noise."""
        return cls(
            models=tuple(
                ModelConfig(id=name, spec=ModelSpec(tiny_seed=seed), slots=slots)
                for name, seed in EMBEDDED_MODELS.items()
            )
        )
