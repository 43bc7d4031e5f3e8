"""Concurrent sessions per API key on one ingress replica: one key cannot take every slot."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator


class KeySessions:
    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._open: Counter[str] = Counter()

    def count(self, key: str) -> int:
        return self._open[key]

    @contextlib.contextmanager
    def hold(self, key: str | None) -> Iterator[bool]:
        """Yields whether the key may open one more session; while it is held, the session counts."""
        if key is None or self._limit is None:
            yield True
            return
        if self._open[key] >= self._limit:
            yield False
            return
        self._open[key] += 1
        try:
            yield True
        finally:
            self._open[key] -= 1
            if not self._open[key]:
                del self._open[key]
