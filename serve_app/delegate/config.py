"""Where a model's delegate is: an OpenAI-compatible chat model that answers for Moshi (tools, instructions).

Configured server-wide (`AppConfig.delegate`) or per model id (`ModelConfig.delegate`, which wins); for
`make serve` also from the environment (`from_env`). Pure data: the HTTP client is `client.py`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DelegateConfig", "DelegateMode"]

DelegateMode = Literal["duplex", "delegate"]
"""`duplex`: Moshi talks freely and the delegate's answers are spoken when they come. `delegate`: Moshi
speaks only the delegate's words (its own text stream is held at padding: it listens, does not answer)."""

ENV_URL = "REALTIME_DELEGATE_URL"
ENV_MODEL = "REALTIME_DELEGATE_MODEL"
ENV_API_KEY = "REALTIME_DELEGATE_API_KEY"
ENV_MODE = "REALTIME_DELEGATE_MODE"


class DelegateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(min_length=1)
    """The chat API's base, e.g. https://api.openai.com/v1 (requests go to `{base_url}/chat/completions`)."""
    model: str = Field(min_length=1)
    api_key_env: str | None = ENV_API_KEY
    """The environment variable holding the API key (the key itself never sits in a config or a log)."""
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    """One call's whole budget; past it the session gets `delegate_timeout` and goes on."""
    mode: DelegateMode = "duplex"
    floor_wait_ms: int = Field(default=1500, ge=0, le=30_000)
    """How long an answer waits for Moshi to pause its own speech before it takes the floor (duplex)."""
    max_tokens: int | None = Field(default=256, ge=1)

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None if self.api_key_env else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DelegateConfig | None:
        """The server-wide delegate `make serve` takes from REALTIME_DELEGATE_URL/_MODEL (and _MODE); None
        without a URL."""
        env = os.environ if env is None else env
        url = env.get(ENV_URL, "").strip()
        if not url:
            return None
        mode = env.get(ENV_MODE, "").strip() or "duplex"
        model = env.get(ENV_MODEL, "").strip() or "gpt-4o-mini"
        return cls.model_validate({"base_url": url, "model": model, "mode": mode})
