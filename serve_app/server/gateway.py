"""The async port between a WebSocket session and wherever its model slot lives.

The in-process gateway (tests, no Ray) and the Ray gateway (deployments/) both implement it, so the
WebSocket app is the same in both worlds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import numpy as np
import numpy.typing as npt

from serve_app.config import ModelTraits
from serve_app.engine.port import EngineFrame, Persona


class GatewayError(Exception):
    """Base for failures the session reports to its client as an `error` event."""

    code = "server_error"


class ModelNotFound(GatewayError):
    code = "model_not_found"


class NoCapacity(GatewayError):
    """Every replica of the model type is full and it cannot scale further."""

    code = "server_at_capacity"


class SessionLost(GatewayError):
    """The replica holding this session's streaming state went away; the state is gone."""

    code = "session_lost"


class SessionFellBehind(GatewayError):
    """The replica could not keep this session in real time; it was ended rather than served late."""

    code = "session_fell_behind"


class SlotStream(Protocol):
    """One session's slot on one model replica, for the session's whole life."""

    text_delay_s: float
    """How far the slot's text trails its input: 0 for Moshi; a streaming ASR's delay (Kyutai STT)."""

    async def send_audio(self, pcm: npt.NDArray[np.float32]) -> None:
        """Queue 24 kHz mono float32 PCM of any length for the slot."""
        ...

    def frames(self) -> AsyncIterator[EngineFrame]:
        """Engine output, one frame per tick that stepped this slot. Raises SessionLost or
        SessionFellBehind."""
        ...

    async def set_persona(self, persona: Persona) -> None:
        """Before the slot's first audio: who the model speaks as (voice prompt and role text; unset
        fields take the model's defaults). The replica prefills the prompt between ticks; audio sent
        meanwhile waits for it. No-op on a model without a prompt channel (`ModelTraits.prompt_channel`).
        A persona the replica cannot prompt ends the session (SessionLost, from `frames()`)."""
        ...

    async def say(self, text: str) -> None:
        """Scripted speech: the model says exactly `text` in its own voice, from its next step on (replacing
        a running script). Its frames are `scripted` (their texts join to `text`); the last is
        `script_done`."""
        ...

    async def stop_saying(self) -> None:
        """Cancel the running script (no-op when none): no further frame is `scripted`."""
        ...

    async def close(self) -> None:
        """Free the slot; idempotent."""
        ...


class ModelGateway(Protocol):
    def model_ids(self) -> list[str]: ...

    def traits(self, model_id: str) -> ModelTraits:
        """What the model's sessions may ask of it (voices, instructions), known without loading it; raises
        ModelNotFound."""
        ...

    async def is_ready(self) -> bool:
        """True once every model has warmed up."""
        ...

    def status(self) -> Mapping[str, object]:
        """Per model: what is known of its replicas' capacity (JSON-serialisable)."""
        ...

    async def open_session(self, model_id: str, session_id: str) -> SlotStream:
        """Admit a session: raises ModelNotFound, NoCapacity, or GatewayError."""
        ...
