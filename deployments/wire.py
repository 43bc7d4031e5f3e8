"""What travels on a session's stream from a model replica to the ingress (no torch, no Ray here).

The first item is always an `Admission`; every later item is a `ServedFrame` stamped with the replica
that produced it, so the ingress can prove (and tests can check) that one replica served the session.
"""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.engine.port import EngineFrame


@dataclass(frozen=True, slots=True)
class Admission:
    """The replica's verdict on a new session: `slot` is None when it had no free slot."""

    replica_id: str
    """Serve's unique id of the replica (stable for the replica's life)."""
    actor_name: str
    """The replica's Ray actor name, for operators (`ray.get_actor(name, namespace="serve")`)."""
    slot: int | None

    @property
    def admitted(self) -> bool:
        return self.slot is not None


@dataclass(frozen=True, slots=True)
class ServedFrame:
    replica_id: str
    frame: EngineFrame
