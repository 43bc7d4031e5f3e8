"""Where an ingress reaches a model replica's frame channel; handed over in the admission (over Ray)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChannelAddress:
    node_id: str
    """Ray node of the replica: an ingress on the same node uses the Unix socket."""
    unix_path: str
    tcp_host: str
    """Empty when the replica listens on the Unix socket only."""
    tcp_port: int
    token: bytes
    """16 random bytes: a connection must present them first."""

    def __repr__(self) -> str:  # keep the token out of logs
        tcp = f"{self.tcp_host}:{self.tcp_port}"
        return f"ChannelAddress(node={self.node_id[:8]}, unix={self.unix_path}, tcp={tcp})"
