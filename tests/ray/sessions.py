"""Live sessions against the Ray suite's cluster through the official SDK: paced speech out, every event in,
placement on chosen replicas, and the ingress's ledger of which replica served what."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import websockets
from openai import AsyncOpenAI

from serve_app.constants import FRAME_S, FRAME_SAMPLES
from tests.fixtures.audio import speech_like, to_pcm16
from tests.ray.conftest import Cluster


@dataclass
class LiveSession:
    """One socket through the SDK: paced speech out (optional), every event in, with arrival times."""

    conn: Any
    session_id: str
    events: list[tuple[float, Any]] = field(default_factory=list)
    closed_at: float | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def of_type(self, kind: str) -> list[Any]:
        return [e for _, e in self.events if e.type == kind]

    def errors(self) -> list[Any]:
        return self.of_type("error")

    async def wait_for(self, predicate: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for _, event in self.events[seen:]:
                if predicate(event):
                    return event
            seen = len(self.events)
            if self.closed.is_set():
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"no matching event; got {[e.type for _, e in self.events][-20:]}")

    async def _receive(self) -> None:
        try:
            while True:
                event = await self.conn.recv()
                self.events.append((time.monotonic(), event))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed_at = time.monotonic()
            self.closed.set()

    async def _speak(self, seconds: float, seed: int) -> None:
        pcm = speech_like(seconds, seed=seed)
        step = FRAME_SAMPLES
        with contextlib.suppress(websockets.ConnectionClosed):
            for start in range(0, len(pcm), step):
                if self.closed.is_set():
                    return
                chunk = base64.b64encode(to_pcm16(pcm[start : start + step])).decode()
                await self.conn.input_audio_buffer.append(audio=chunk)
                await asyncio.sleep(FRAME_S)


class Refused(Exception):
    """The server answered the connection with an `error` instead of `session.created`."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@contextlib.asynccontextmanager
async def live_session(
    cluster: Cluster, model: str, speak_s: float = 0.0, seed: int = 0
) -> AsyncIterator[LiveSession]:
    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=cluster.ws_base)
    async with client.realtime.connect(model=model) as conn:
        created = await asyncio.wait_for(conn.recv(), 15)
        if created.type == "error":
            raise Refused(created.error.code)
        assert created.type == "session.created", created
        # The SDK's GA session type has no `id` field; the server sends it (the ingress ledger's key).
        wire: dict[str, Any] = created.to_dict()
        session = LiveSession(conn, wire["session"]["id"])
        session.tasks.append(asyncio.create_task(session._receive()))
        if speak_s:
            session.tasks.append(asyncio.create_task(session._speak(speak_s, seed)))
        try:
            yield session
        finally:
            for task in session.tasks:
                task.cancel()
            await asyncio.gather(*session.tasks, return_exceptions=True)


async def admitted_session(
    stack: contextlib.AsyncExitStack,
    cluster: Cluster,
    model: str,
    speak_s: float,
    seed: int,
    within_s: float,
    *,
    until_reachable: bool = False,
) -> LiveSession:
    """A live session, retried while the server answers `server_at_capacity` (and nothing else), or, with
    `until_reachable`, while no ingress answers the handshake yet (one being replaced)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await stack.enter_async_context(live_session(cluster, model, speak_s=speak_s, seed=seed))
        except Refused as refused:
            assert refused.code == "server_at_capacity", refused.code
            assert time.monotonic() < deadline, "still refused"
        except (OSError, TimeoutError, websockets.InvalidHandshake):
            if not until_reachable or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(1.0)


async def ledger(cluster: Cluster) -> dict[str, dict[str, int]]:
    return await asyncio.to_thread(cluster.session_replicas)


async def wait_frames(
    cluster: Cluster, sessions: list[LiveSession], at_least: dict[str, int], timeout: float
) -> None:
    """Until the ingress has received at least `at_least[sid]` (default 1) frames for each session."""
    deadline = time.monotonic() + timeout
    while True:
        served = await ledger(cluster)
        short = [
            s.session_id
            for s in sessions
            if sum(served.get(s.session_id, {}).values()) < at_least.get(s.session_id, 1)
        ]
        if not short:
            return
        assert time.monotonic() < deadline, f"no frames for {short}"
        await asyncio.sleep(0.25)


def frames_of(served: dict[str, dict[str, int]], session: LiveSession) -> int:
    return sum(served.get(session.session_id, {}).values())


async def moves(cluster: Cluster) -> dict[str, list[dict[str, Any]]]:
    return await asyncio.to_thread(cluster.session_moves)


async def sessions_on_each_replica(
    stack: contextlib.AsyncExitStack, cluster: Cluster, model: str, per_replica: dict[int, int], seed: int
) -> tuple[list[LiveSession], dict[str, str]]:
    """Open sessions until the replicas hold `per_replica` (index → count, by arrival order) of them."""
    sessions: list[LiveSession] = []
    replica_of: dict[str, str] = {}
    replicas: list[str] = []
    for attempt in range(12):
        leave = contextlib.AsyncExitStack()
        # A probe just closed frees its slot a moment later, and on 2 busy cores a replica may briefly stop
        # admitting: both answer server_at_capacity, which says to try again.
        session = await admitted_session(leave, cluster, model, speak_s=90, seed=seed + attempt, within_s=30)
        await wait_frames(cluster, [session], {}, timeout=30)
        replica = next(iter((await ledger(cluster))[session.session_id]))
        if replica not in replicas:
            replicas.append(replica)
        held = list(replica_of.values()).count(replica)
        if held >= per_replica.get(replicas.index(replica), 0):
            await leave.aclose()
            continue
        stack.push_async_exit(leave)
        sessions.append(session)
        replica_of[session.session_id] = replica
        if len(sessions) == sum(per_replica.values()):
            return sessions, replica_of
    raise AssertionError(f"could not place sessions {per_replica}: {replica_of}")
