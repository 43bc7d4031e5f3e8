"""Input channel for sessions: one actor per ingress replica, one queue per session inside it.

Deployment handles cannot stream arguments into a running call, so a session's audio goes from the
ingress into this actor (`put`) and its model replica long-polls it (`take`). One shared actor per
ingress replica keeps session setup to one small call (a queue actor per session costs ~0.6 s).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import numpy.typing as npt
import ray

Pcm = npt.NDArray[np.float32]

_CLOSED = None

DEFAULT_MAX_CHUNKS = 1000
"""Chunks a session may have waiting (≈80 s of frames): only a reader that stopped reading fills it."""


class SessionInbox:
    """session id → queue of PCM chunks. Unknown or closed sessions refuse input and end their reader."""

    def __init__(self, max_chunks: int = DEFAULT_MAX_CHUNKS) -> None:
        self._max_chunks = max_chunks
        self._queues: dict[str, asyncio.Queue[Pcm | None]] = {}

    def open(self, session_id: str) -> None:
        if session_id in self._queues:
            raise ValueError(f"session {session_id} is already open")
        self._queues[session_id] = asyncio.Queue()

    def put(self, session_id: str, pcm: Pcm) -> bool:
        """Queue audio for the session; False when the session is unknown, closed, or not being read."""
        queue = self._queues.get(session_id)
        if queue is None or queue.qsize() >= self._max_chunks:
            return False
        queue.put_nowait(pcm)
        return True

    async def take(self, session_id: str) -> list[Pcm] | None:
        """Wait for audio and return all that is queued; None once the session is closed or unknown."""
        queue = self._queues.get(session_id)
        if queue is None:
            return None
        first = await queue.get()
        if first is _CLOSED:
            return None
        chunks = [first]
        while not queue.empty():
            item = queue.get_nowait()
            if item is _CLOSED:
                queue.put_nowait(_CLOSED)  # hand the end to the next take, after this audio
                break
            chunks.append(item)
        return chunks

    def close(self, session_id: str) -> None:
        queue = self._queues.pop(session_id, None)
        if queue is not None:
            queue.put_nowait(_CLOSED)

    def open_sessions(self) -> int:
        return len(self._queues)


def start_inbox(max_concurrency: int = 10_000) -> Any:
    """Start an inbox actor beside the calling process (same node when it fits); returns its handle.

    The caller owns the actor, so it dies with the ingress replica that created it and every model
    replica reading from it sees its sessions end.
    """
    node_id = ray.get_runtime_context().get_node_id()
    strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)
    actor_cls = ray.remote(SessionInbox)
    return actor_cls.options(
        num_cpus=0, max_concurrency=max_concurrency, scheduling_strategy=strategy
    ).remote()
