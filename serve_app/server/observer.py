"""Hooks the socket shell calls so a deployment can export metrics without the shell knowing Ray."""

from __future__ import annotations

from typing import Protocol


class SessionObserver(Protocol):
    def session_started(self, model_id: str) -> None: ...

    def session_ended(self, model_id: str) -> None: ...

    def session_rejected(self, model_id: str, code: str) -> None: ...

    def error_sent(self, model_id: str, code: str) -> None: ...

    def first_audio(self, model_id: str, seconds: float) -> None:
        """Seconds from the session's first input audio to its first output audio delta."""
        ...

    def delegate_call(self, model_id: str, result: str, seconds: float) -> None:
        """A delegate call ended after `seconds`: `result` is "ok" (a text reply), "tool_calls", or the
        error code the session got (delegate_timeout, delegate_failed, delegate_invalid_reply)."""
        ...

    def tool_calls(self, model_id: str, count: int) -> None:
        """A delegate reply asked for `count` function calls."""
        ...


class NullObserver:
    def session_started(self, model_id: str) -> None:
        pass

    def session_ended(self, model_id: str) -> None:
        pass

    def session_rejected(self, model_id: str, code: str) -> None:
        pass

    def error_sent(self, model_id: str, code: str) -> None:
        pass

    def first_audio(self, model_id: str, seconds: float) -> None:
        pass

    def delegate_call(self, model_id: str, result: str, seconds: float) -> None:
        pass

    def tool_calls(self, model_id: str, count: int) -> None:
        pass
