"""What to load and how to sample: the typed, frozen inputs of the engine (no torch here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator


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
    device: str = "auto"
    """"auto" picks cuda when available, else cpu."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """"auto" is bfloat16 on CUDA and float32 on CPU (no bf16 hardware on our CPUs)."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        sources = [name for name in ("hf_repo", "local_dir", "tiny_seed") if getattr(self, name) is not None]
        if len(sources) != 1:
            raise ValueError(
                f"exactly one of hf_repo, local_dir, tiny_seed must be set, got {sources or 'none'}"
            )
        if self.revision is not None and self.hf_repo is None:
            raise ValueError("revision is only meaningful with hf_repo")
        return self
