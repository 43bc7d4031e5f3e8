"""Explicit lifecycle states of a session and of a response, and the error an illegal transition raises."""

from __future__ import annotations

from enum import StrEnum


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
