"""Which ASR backends a deployment offers (the `asr` section of the app config)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_app.engine.spec import ModelConfig, ModelSpec, RealtimeLimits, SamplingParams

GREEDY = SamplingParams(use_sampling=False, temp=0.0, temp_text=0.0)
"""How Kyutai STT decodes (its checkpoints ship temp 0): a transcript, not a sample."""


class AsrBackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    """What a session names as its transcription `model` to pick this backend."""
    kind: Literal["pocketsphinx", "openai", "faster_whisper", "kyutai"]
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
    spec: ModelSpec | None = None
    """kyutai: the STT checkpoint (hf_repo kyutai/stt-1b-en_fr or stt-2.6b-en, a local_dir, or a tiny
    generated one: tiny_seed with tiny_kind stt). It streams on engine slots of the ASR deployment."""
    slots: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = 8
    """kyutai: streams one ASR replica batches (each transcribing session holds one for its life)."""
    max_slots: int = Field(default=64, ge=1, le=1024)
    realtime: RealtimeLimits = RealtimeLimits()

    @model_validator(mode="after")
    def _needs_its_fields(self) -> AsrBackendConfig:
        if self.kind == "faster_whisper" and not self.model_dir:
            raise ValueError(f"ASR backend {self.id!r}: kind faster_whisper needs model_dir")
        if self.kind == "kyutai" and self.spec is None:
            raise ValueError(f"ASR backend {self.id!r}: kind kyutai needs spec (where its checkpoint is)")
        return self

    @property
    def streaming(self) -> bool:
        """Transcribes while the user speaks, on a stream the session holds (not turn by turn)."""
        return self.kind == "kyutai"

    def engine_config(self) -> ModelConfig:
        """kyutai: the streaming engine, configured like a model type (greedy, text out)."""
        if self.spec is None:
            raise ValueError(f"ASR backend {self.id!r} has no engine")
        return ModelConfig(
            id=self.id,
            spec=self.spec,
            slots=self.slots,
            max_slots=self.max_slots,
            sampling=GREEDY,
            realtime=self.realtime,
        )


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
        streaming = [b.id for b in self.backends if b.streaming]
        if len(streaming) > 1:
            # One engine per ASR replica keeps its slots and clock simple (another application can hold more).
            raise ValueError(f"at most one streaming (kyutai) ASR backend, got {streaming}")
        return self

    @property
    def streaming_backend(self) -> AsrBackendConfig | None:
        return next((b for b in self.backends if b.streaming), None)

    def backend_for(self, model: str | None) -> AsrBackendConfig:
        by_id = {b.id: b for b in self.backends}
        return by_id.get(model or "", by_id[self.default])
