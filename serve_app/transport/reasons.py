"""Why a lease ended on the replica's side, as carried by ENDED messages (gateways map them to codes)."""

from __future__ import annotations

from enum import StrEnum


class EndReason(StrEnum):
    RELEASED = "released"
    """The ingress released it: a normal end."""
    FELL_BEHIND = "fell_behind"
    """The session's input waited past the replica's lag limit."""
    MODEL_FAILED = "model_failed"
    """A model step raised."""
    UNKNOWN = "unknown_session"
    """The replica holds no such lease for this connection."""
    LOST = "lost"
    """The connection or the replica went away."""
    MOVED = "moved"
    """The replica is draining: the session should continue on another replica, rebuilt from its history."""
