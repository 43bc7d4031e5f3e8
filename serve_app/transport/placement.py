"""What the session-move logic asks of a deployment: a place for a session on some replica of a model.

A `Placement` is one admission of a session on one replica, as the ingress holds it: the replica, the
session's share of that replica's frame channel, and how to give the slot up. A `Placer` finds one, for a
new session or (`resume`) for one that continues from a replica that drained or died. The Ray gateway
(deployments/ray_gateway.py) implements both over Serve's lease calls; the move logic's unit tests over
in-process replica ports. The replica's own record of the same admission is `replica_port.Lease`.
"""

from __future__ import annotations

from typing import Protocol

from serve_app.engine.history import HistorySpec, ResumeWindow
from serve_app.transport.ingress_channel import ChannelSession


class Placement(Protocol):
    """One admission of a session on one replica, held by the ingress until released or abandoned."""

    @property
    def replica_id(self) -> str: ...

    @property
    def text_delay_s(self) -> float:
        """How far the slot's text trails its input (a streaming ASR's delay; 0 for Moshi)."""
        ...

    @property
    def history(self) -> HistorySpec | None:
        """What the session must keep to be rebuilt on another replica (None: it cannot move)."""
        ...

    @property
    def channel(self) -> ChannelSession:
        """The session's slot as seen through the replica's frame channel."""
        ...

    def abandon(self) -> None:
        """The slot is gone on the replica's side (it drained or died): stop following this placement."""
        ...

    async def release(self) -> None:
        """The session ended: free the slot; returns once the replica let go of it (or gave up waiting)."""
        ...


class Placer(Protocol):
    async def place(
        self,
        model_id: str,
        session_id: str,
        *,
        resume: ResumeWindow | None = None,
        timeout_s: float | None = None,
    ) -> Placement:
        """Admit the session on a replica of `model_id` with room for it and attach to its channel.

        With `resume`, the session continues where its last replica left it: the new replica rebuilds its
        slot from the window, and admits it only if it can also catch up on the input it missed. Raises a
        `GatewayError`: `NoCapacity` when no replica has room within `timeout_s` (the placer's default when
        None), `ModelNotFound`, `SessionLost` when the admitting replica's channel cannot be reached."""
        ...
