"""Which ASR backends a deployment offers (the `asr` section of the app config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class AsrBackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    """What a session names as its transcription `model` to pick this backend."""
    kind: Literal["pocketsphinx", "openai", "faster_whisper"]
    base_url: str | None = None
    """openai: the API's base URL (None: OpenAI's own)."""
    model: str | None = None
    """openai: the model name sent to the API (default: this backend's id)."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai: the environment variable holding the API key (keys never go in config files)."""
    timeout_s: float = Field(default=30.0, gt=0)
    model_dir: str | None = None
    """faster_whisper: a converted (CTranslate2) model directory on disk; never downloaded."""
    device: str = "cpu"
    """faster_whisper: cpu, cuda or auto (a GPU also needs num_gpus on the RealtimeAsr deployment)."""
    compute_type: str = "default"
    """faster_whisper: int8, float16, int8_float16, ... (CTranslate2's names)."""
    beam_size: int = Field(default=5, ge=1)

    @model_validator(mode="after")
    def _needs_its_fields(self) -> AsrBackendConfig:
        if self.kind == "faster_whisper" and not self.model_dir:
            raise ValueError(f"ASR backend {self.id!r}: kind faster_whisper needs model_dir")
        return self


class AsrConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backends: tuple[AsrBackendConfig, ...] = (AsrBackendConfig(id="pocketsphinx", kind="pocketsphinx"),)
    default: str = "pocketsphinx"
    """The backend for a session whose transcription `model` names none of them (whisper-1,
    gpt-4o-transcribe, ...): clients written for the hosted service still get transcripts."""

    @model_validator(mode="after")
    def _default_exists(self) -> AsrConfig:
        ids = [b.id for b in self.backends]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate ASR backend ids: {ids}")
        if self.default not in ids:
            raise ValueError(f"asr.default {self.default!r} is not one of the backends {ids}")
        return self

    def backend_for(self, model: str | None) -> AsrBackendConfig:
        by_id = {b.id: b for b in self.backends}
        return by_id.get(model or "", by_id[self.default])
