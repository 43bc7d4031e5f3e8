"""Which replicas served each recent session, and its moves between them (bounded; for operators and tests).

The ingress exposes it (`session_replicas`, `session_moves`); the move logic (session_move.py) writes it.
"""

from __future__ import annotations

import collections
from typing import Any

LEDGER_SESSIONS = 4096


class SessionLedger:
    """Frames served per (session, replica) and each session's moves, for the last `capacity` sessions."""

    def __init__(self, capacity: int = LEDGER_SESSIONS) -> None:
        self._capacity = capacity
        self._served: collections.OrderedDict[str, dict[str, int]] = collections.OrderedDict()
        self._moves: collections.OrderedDict[str, list[dict[str, Any]]] = collections.OrderedDict()

    def record(self, session_id: str, replica_id: str) -> None:
        counts = self._served.get(session_id)
        if counts is None:
            counts = self._served[session_id] = {}
            while len(self._served) > self._capacity:
                self._served.popitem(last=False)
        counts[replica_id] = counts.get(replica_id, 0) + 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {sid: dict(counts) for sid, counts in self._served.items()}

    def record_move(self, session_id: str, move: dict[str, Any]) -> None:
        self._moves.setdefault(session_id, []).append(move)
        while len(self._moves) > self._capacity:
            self._moves.popitem(last=False)

    def moves(self) -> dict[str, list[dict[str, Any]]]:
        """session id → its moves: why, from and to which replica, the output gap (s)."""
        return {sid: list(moves) for sid, moves in self._moves.items()}
