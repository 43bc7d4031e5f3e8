"""What one session driver records: plain timestamps (seconds since the run began), no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class Packet(NamedTuple):
    """One audio delta: when it arrived, how much audio it carried, which response it belongs to."""

    at: float
    seconds: float
    response: str


@dataclass
class SessionRecord:
    index: int
    start_s: float
    """When the session began connecting (its first-audio time counts from here)."""
    admitted_s: float | None = None
    """When `session.created` arrived (None: never admitted)."""
    refusal: str | None = None
    """Why it was not admitted: an error code, `close_1013`, `http_<status>`, `unreachable`, ..."""
    refusal_detail: str = ""
    session_id: str = ""
    packets: list[Packet] = field(default_factory=list)
    done_at: dict[str, float] = field(default_factory=dict)
    """Per response id, when its audio ended (`response.output_audio.done` or `response.done`)."""
    errors: list[str] = field(default_factory=list)
    """`error` events' codes after admission, and `close_<code>` when the server closed the socket."""
    ended_s: float | None = None
    """When the session stopped listening (the server closed it, or the run ended)."""
    closed_by_server: int | None = None
    """The close code, when the server closed the socket before the run ended it."""
    frames_sent: int = 0
    send_lag_max_s: float = 0.0
    """Worst lateness of an 80 ms send against its schedule: the client's own health."""

    @property
    def admitted(self) -> bool:
        return self.admitted_s is not None and self.refusal is None
