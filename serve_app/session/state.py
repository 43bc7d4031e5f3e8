"""Explicit lifecycle states of a session and of a response, the error an illegal transition raises, and
the limits of a session's lifetime."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serve_app.session.settings import SessionSettings


class SessionState(StrEnum):
    CONNECTING = "connecting"
    """Constructed; the shell has not accepted the socket yet (only `fail` is legal)."""
    OPEN = "open"
    CLOSED = "closed"
    """After a fatal error or close(); further input is ignored."""


class ResponseState(StrEnum):
    WAITING = "waiting"
    """Created by the client's response.create; Moshi has not started speaking yet."""
    STREAMING = "streaming"
    """Bound to an utterance: its item and content part are open and deltas flow."""
    DONE = "done"


class StateError(RuntimeError):
    """An operation the current state does not allow. The message names the state it expected."""

    def __init__(self, what: str, expected: StrEnum | tuple[StrEnum, ...], actual: StrEnum) -> None:
        wanted = expected if isinstance(expected, tuple) else (expected,)
        names = " or ".join(f"'{state.value}'" for state in wanted)
        super().__init__(f"{what}: expected state {names}, but it is '{actual.value}'.")
        self.actual = actual


def require(what: str, actual: StrEnum, *expected: StrEnum) -> None:
    if actual not in expected:
        raise StateError(what, expected if len(expected) > 1 else expected[0], actual)


class Lifetime:
    """How long a session may last and stay idle, judged on the clock's ticks (the shell's monotonic
    seconds: the core reads no clock). Both count from the first tick; a client message makes the next
    tick the last one it was heard at."""

    def __init__(self, settings: SessionSettings) -> None:
        self._max_session_s = settings.max_session_s
        self._idle_timeout_s = settings.idle_timeout_s
        self._opened_s: float | None = None
        self._heard_s: float | None = None
        self._heard = False

    def heard(self) -> None:
        """A client message arrived."""
        self._heard = True

    def ended(self, now_s: float) -> tuple[str, int] | None:
        """(error code, limit in s) once a limit is reached: session_expired or idle_timeout."""
        if self._opened_s is None:
            self._opened_s = now_s
        if self._heard or self._heard_s is None:
            self._heard_s, self._heard = now_s, False
        if now_s - self._opened_s >= self._max_session_s:
            return "session_expired", self._max_session_s
        idle = self._idle_timeout_s
        if idle is not None and now_s - self._heard_s >= idle:
            return "idle_timeout", idle
        return None
