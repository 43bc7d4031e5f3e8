"""What a session's lease call yields from a model replica to the ingress (no torch here).

The first item is always an `Admission`; once the lease is over the call yields a `LeaseEnd` and
finishes. The audio and frames travel on the frame channel (serve_app/transport), not on this call.
"""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.engine.capacity import CapacityReport
from serve_app.engine.history import HistorySpec
from serve_app.transport.address import ChannelAddress


@dataclass(frozen=True, slots=True)
class Admission:
    """The replica's verdict on a new session: `slot` is None when it had no room for it."""

    replica_id: str
    """Serve's unique id of the replica (stable for the replica's life)."""
    actor_name: str
    """The replica's Ray actor name, for operators (`ray.get_actor(name, namespace="serve")`)."""
    slot: int | None
    lease_id: int = 0
    channel: ChannelAddress | None = None
    capacity: CapacityReport | None = None
    refusal: str = ""
    """Why the session was refused (for logs)."""
    text_delay_s: float = 0.0
    """How far the slot's text trails its input (a streaming ASR's delay; 0 for Moshi)."""
    history: HistorySpec | None = None
    """What the session must keep to be rebuilt on another replica (None: it cannot be)."""

    @property
    def admitted(self) -> bool:
        return self.slot is not None and self.channel is not None


@dataclass(frozen=True, slots=True)
class LeaseEnd:
    reason: str
    """An EndReason value: `moved` asks the ingress to continue the session on another replica."""
    capacity: CapacityReport | None = None
    """The replica's capacity once this session's slot is free (what `/v1/status` shows after it)."""
