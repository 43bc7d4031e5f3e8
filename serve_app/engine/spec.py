"""What to load and how to sample: the typed, frozen inputs of the engine (no torch here)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.delegate.config import DelegateConfig
from serve_app.engine.voice_names import PERSONAPLEX_VOICES, TINY_VOICE_FRAMES


class SamplingParams(BaseModel):
    """LMGen sampling knobs; the defaults are moshi's own (and the stock server's seed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    use_sampling: bool = True
    temp: float = 0.8
    temp_text: float = 0.7
    top_k: int = 250
    top_k_text: int = 25
    seed: int = 42424242

    def lm_gen_kwargs(self) -> dict[str, Any]:
        """The keyword arguments `moshi.models.LMGen` takes for these knobs (the seed is applied apart)."""
        return self.model_dump(exclude={"seed"})


class ModelSpec(BaseModel):
    """Where a checkpoint comes from and where it runs. Exactly one source must be set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hf_repo: str | None = None
    revision: str | None = None
    local_dir: Path | None = None
    tiny_seed: int | None = None
    """Embedded default: a generated tiny checkpoint (random weights), built once and cached."""
    tiny_kind: Literal["moshi", "stt", "personaplex"] = "moshi"
    """Which layout the tiny checkpoint has: Moshi's, or Kyutai STT's (text out, no generated audio)."""
    model_type: Literal["moshi", "personaplex"] | None = None
    """What a hub or local checkpoint is, where the ingress must know it without loading it:
    "personaplex" (NVIDIA PersonaPlex: it takes a voice and a role-text prompt) gives the model voices
    (`ModelConfig.voices`); checked against the checkpoint when it loads. A tiny checkpoint's is its
    `tiny_kind`."""
    device: str = "auto"
    """"auto" picks cuda when available, else cpu."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """"auto" is bfloat16 on CUDA and float32 on CPU (no bf16 hardware on our CPUs)."""
    quantize: Literal["none", "int8", "fp8"] = "none"
    """Weight-only 8-bit storage of the LM's transformer linears, applied after loading
    (serve_app/engine/quantize.py): half the weights' memory, so more slots per GPU. fp8 needs CUDA
    compute capability 8.9 or newer; Mimi, the embeddings and the output heads stay as loaded."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        sources = [name for name in ("hf_repo", "local_dir", "tiny_seed") if getattr(self, name) is not None]
        if len(sources) != 1:
            raise ValueError(
                f"exactly one of hf_repo, local_dir, tiny_seed must be set, got {sources or 'none'}"
            )
        if self.revision is not None and self.hf_repo is None:
            raise ValueError("revision is only meaningful with hf_repo")
        if "tiny_kind" in self.model_fields_set and self.tiny_seed is None:
            raise ValueError("tiny_kind is only meaningful with tiny_seed")
        if self.model_type is not None and self.tiny_seed is not None:
            raise ValueError("a tiny checkpoint's model_type is its tiny_kind")
        return self

    @property
    def persona(self) -> bool:
        """Whether the checkpoint takes a persona prompt (PersonaPlex: voice and role text)."""
        kind = self.tiny_kind if self.tiny_seed is not None else self.model_type
        return kind == "personaplex"


class RealtimeLimits(BaseModel):
    """How a replica keeps its sessions in real time (serve_app/engine/capacity.py, runner.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    admit_fraction: float | None = Field(default=0.7, gt=0, le=1)
    """A replica admits a session while its recent ticks, plus what one more session is expected to add,
    stay under this share of the 80 ms period; null admits on free slots alone."""
    max_lag_ms: int | None = Field(default=1000, ge=160)
    """A session whose input waits longer than this is ended with `session_fell_behind` rather than
    answered late; null never ends one."""


class ModelConfig(BaseModel):
    """One model type: its weights, how many sessions a replica batches, how it samples."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    spec: ModelSpec
    slots: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = 8
    """Sessions one replica batches. "auto": as many as fit the GPU memory free after loading and keep the
    tick within its share of the 80 ms frame, at most `max_slots` (serve_app/engine/sizing.py)."""
    max_slots: int = Field(default=64, ge=1, le=1024)
    """Upper bound for `slots: auto`, and the replica's Serve `max_ongoing_requests` in that case."""
    sampling: SamplingParams = SamplingParams()
    realtime: RealtimeLimits = RealtimeLimits()
    voices: tuple[str, ...] | None = None
    """A PersonaPlex model's voice prompts by name: what sessions may pick (None: the checkpoint's usual
    set, the 18 of nvidia/personaplex-7b-v1 or the tiny checkpoint's three)."""
    default_voice: str | None = None
    """A PersonaPlex model's voice for a session that names none (None: NATF2, else its first by name)."""
    default_instructions: str | None = None
    """A PersonaPlex model's role text for a session that gives none (None: no role text)."""
    delegate: DelegateConfig | None = None
    """The chat model that answers for this model's sessions (tools, instructions); None: the server-wide
    one (AppConfig.delegate), if any. Its `mode: delegate` holds Moshi's own text at padding."""

    @property
    def holds_text(self) -> bool:
        """Moshi speaks only what it is given (delegate mode): its own text stream stays at padding."""
        return self.delegate is not None and self.delegate.mode == "delegate"

    @field_validator("slots", mode="before")
    @classmethod
    def _slots_is_a_count_or_auto(cls, value: object) -> object:
        # A YAML `slots: true` would otherwise pass as 1; "Auto"/"AUTO" are accepted as "auto".
        if isinstance(value, bool):
            raise ValueError("slots must be a whole number of sessions or 'auto'")
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return value

    @model_validator(mode="after")
    def _slots_within_max(self) -> ModelConfig:
        if (
            "max_slots" in self.model_fields_set
            and isinstance(self.slots, int)
            and self.slots > self.max_slots
        ):
            raise ValueError(f"slots {self.slots} exceeds max_slots {self.max_slots}")
        return self

    @model_validator(mode="after")
    def _persona_settings(self) -> ModelConfig:
        given = [
            name
            for name in ("voices", "default_voice", "default_instructions")
            if getattr(self, name) is not None
        ]
        if given and not self.spec.persona:
            raise ValueError(
                f"{', '.join(given)}: only a PersonaPlex model (spec.model_type: personaplex) has them"
            )
        if self.voices is not None and not self.voices:
            raise ValueError("voices: a PersonaPlex model needs at least one voice")
        voices = self.persona_voices()
        if self.default_voice is not None and self.default_voice not in voices:
            raise ValueError(
                f"default_voice {self.default_voice!r} is not one of the voices: {', '.join(voices)}"
            )
        return self

    def persona_voices(self) -> tuple[str, ...]:
        """The voices sessions may pick: configured, else the checkpoint's usual set (empty: no prompt)."""
        if not self.spec.persona:
            return ()
        if self.voices is not None:
            return self.voices
        return tuple(TINY_VOICE_FRAMES) if self.spec.tiny_seed is not None else PERSONAPLEX_VOICES

    def runner_options(self) -> dict[str, Any]:
        """Keyword arguments of `serve_app.engine.startup.start_runner` for this model."""
        limits = self.realtime
        return {
            "spec": self.spec,
            "slots": self.slots,
            "max_slots": self.max_slots,
            "sampling": self.sampling,
            "model_id": self.id,
            "max_lag_s": limits.max_lag_ms / 1000 if limits.max_lag_ms is not None else None,
            "admit_fraction": limits.admit_fraction,
            "hold_text": self.holds_text,
        }

    @property
    def max_sessions(self) -> int:
        """Serve's `max_ongoing_requests` for the model's replicas: one lease call per session."""
        return self.slots if isinstance(self.slots, int) else self.max_slots
