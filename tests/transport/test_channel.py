"""The frame channel end to end: a real tiny engine, clocked, behind a ReplicaPort; ReplicaChannel clients.

Everything runs in the test's event loop except the engine clock (its own thread), as in a replica.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import numpy as np
import pytest

from serve_app.constants import FRAME_S, FRAME_SAMPLES
from serve_app.engine.batch import BatchedEngine
from serve_app.engine.errors import TickBudgetFull
from serve_app.engine.port import EngineFrame
from serve_app.engine.runner import ClockedRunner
from serve_app.engine.tick_stats import TickStats
from serve_app.transport import wire
from serve_app.transport.ingress_channel import ChannelEnded, ChannelSession, ReplicaChannel
from serve_app.transport.pool import ChannelPool
from serve_app.transport.reasons import EndReason
from serve_app.transport.replica_port import Lease, ReplicaPort
from serve_app.transport.stream import read_message
from tests.engine.support import noise
from tests.transport.conftest import OTHER_NODE, REPLICA_ID, REPLICA_NODE, SLOTS, Connect

# --- helpers ---------------------------------------------------------------------------------------------


class Reader:
    """Drains one session's `frames()` in the background: what it got, and how it ended."""

    def __init__(self, session: ChannelSession) -> None:
        self.session = session
        self.frames: list[EngineFrame] = []
        self.ended: ChannelEnded | None = None
        self.task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            async for frame in self.session.frames():
                self.frames.append(frame)
        except ChannelEnded as exc:
            self.ended = exc

    async def wait_frames(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.frames) < count:
                assert not self.task.done(), f"ended after {len(self.frames)} frames: {self.ended!r}"
                await asyncio.sleep(0.01)

    async def settle(self, quiet_s: float = 0.4, timeout: float = 10.0) -> int:
        """Wait until no frame arrived for `quiet_s`; the count then."""
        async with asyncio.timeout(timeout):
            while True:
                count = len(self.frames)
                await asyncio.sleep(quiet_s)
                if len(self.frames) == count:
                    return count

    async def finished(self, timeout: float = 5.0) -> ChannelEnded | None:
        """`frames()` returned (None) or raised (the ChannelEnded)."""
        await asyncio.wait_for(asyncio.shield(self.task), timeout)
        return self.ended


async def feed(plan: list[tuple[ChannelSession, int]], seed: int = 0) -> None:
    """Real-time input: one 1920-sample frame per session every 80 ms, `count` frames for each session."""
    audio = [noise(count, seed=seed + i) for i, (_, count) in enumerate(plan)]
    for step in range(max(count for _, count in plan)):
        for (session, count), pcm in zip(plan, audio, strict=True):
            if step < count:
                session.send_audio(pcm[step * FRAME_SAMPLES : (step + 1) * FRAME_SAMPLES])
        await asyncio.sleep(FRAME_S)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def ended(lease: Lease, timeout: float = 5.0) -> EndReason:
    return await asyncio.wait_for(asyncio.shield(lease.ended), timeout)


async def raw_connection(port: ReplicaPort) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-driven connection over the Unix socket, past the hello."""
    assert port.address is not None
    reader, writer = await asyncio.open_unix_connection(port.address.unix_path)
    writer.write(wire.encode_hello(port.address.token))
    assert await asyncio.wait_for(read_message(reader), 5) == wire.Welcome(REPLICA_ID)
    return reader, writer


async def next_ended(reader: asyncio.StreamReader, timeout: float = 5.0) -> wire.Ended:
    async with asyncio.timeout(timeout):
        while True:
            message = await read_message(reader)
            assert message is not None, "the replica closed the connection"
            if isinstance(message, wire.Ended):
                return message


# --- a session's life ------------------------------------------------------------------------------------


@pytest.mark.parametrize("node", [REPLICA_NODE, OTHER_NODE], ids=["unix-socket-same-node", "tcp-other-node"])
async def test_session_streams_frames_and_release_frees_the_slot(
    port: ReplicaPort, runner: ClockedRunner, connect: Connect, node: str
) -> None:
    address = port.address
    assert address is not None
    # Prove which transport carries it: the other one points nowhere.
    if node == REPLICA_NODE:
        address = dataclasses.replace(address, tcp_port=1)
    else:
        address = dataclasses.replace(address, unix_path=address.unix_path + ".nowhere")
    lease = port.lease("session-1")
    assert (runner.slots_used, port.sessions) == (1, 1)
    channel = await connect(node, address)
    assert channel.replica_id == REPLICA_ID
    session = channel.attach(lease.id)
    assert channel.sessions == 1
    reader = Reader(session)
    await feed([(session, 15)], seed=1)
    await reader.wait_frames(12)
    assert all(f.pcm.shape == (FRAME_SAMPLES,) and f.pcm.dtype == np.float32 for f in reader.frames)
    assert all(f.speaking == (f.text is not None) for f in reader.frames)
    assert 0 < channel.last_tick_s < 1.0  # the tick's duration rides along
    assert not lease.ended.done() and runner.slots_used == 1

    session.close()
    assert await ended(lease) is EndReason.RELEASED
    assert (runner.slots_used, port.sessions, channel.sessions) == (0, 0, 0)
    assert await reader.finished() is None  # frames() simply ends after a close
    session.close()  # idempotent
    session.send_audio(noise(1, seed=2))  # after close: dropped, not an error
    assert not channel.closed.is_set()  # the connection outlives its sessions


async def test_unix_socket_is_used_when_there_is_no_tcp(port: ReplicaPort, connect: Connect) -> None:
    assert port.address is not None
    address = dataclasses.replace(port.address, tcp_host="", tcp_port=0)
    channel = await connect(OTHER_NODE, address)  # another node, but nothing else to reach
    assert not channel.closed.is_set()


async def test_sessions_sharing_a_connection_get_only_their_own_frames(
    port: ReplicaPort,
    runner: ClockedRunner,
    connect: Connect,
    ticks: list[TickStats],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[wire.Message] = []  # both directions: the port and the channel decode in this process
    real_decode = wire.decode

    def spy(message: bytes) -> wire.Message:
        decoded = real_decode(message)
        seen.append(decoded)
        return decoded

    monkeypatch.setattr(wire, "decode", spy)
    first, second = port.lease("a"), port.lease("b")
    channel = await connect()
    a, b = channel.attach(first.id), channel.attach(second.id)
    readers = Reader(a), Reader(b)
    await feed([(a, 15), (b, 8)], seed=3)
    counts = [await r.settle() for r in readers]
    assert counts[0] >= 12 and counts[0] - counts[1] == 15 - 8

    frames = [m for m in seen if isinstance(m, wire.Frames)]
    assert all(len(set(m.leases)) == len(m.leases) for m in frames)
    assert {lease for m in frames for lease in m.leases} == {first.id, second.id}
    per_lease = {lid: sum(m.leases.count(lid) for m in frames) for lid in (first.id, second.id)}
    assert per_lease == {first.id: counts[0], second.id: counts[1]}
    assert sum(len(m.leases) == 2 for m in frames) >= counts[1] - 1  # both of a tick in one message
    assert len(frames) == sum(t.stepped_slots > 0 for t in ticks)  # one FRAMES message per tick
    # Input of both sessions sent in one loop turn shares one AUDIO message.
    audio = [m for m in seen if isinstance(m, wire.Audio)]
    assert sum(m.leases == (first.id, second.id) for m in audio) == 8
    assert len(audio) == 15

    a.close()
    assert await ended(first) is EndReason.RELEASED
    assert not second.ended.done()
    b.close()
    assert await ended(second) is EndReason.RELEASED
    assert runner.slots_used == 0


# --- who may connect, and to what ------------------------------------------------------------------------


@pytest.mark.parametrize("node", [REPLICA_NODE, OTHER_NODE], ids=["unix", "tcp"])
async def test_wrong_token_is_refused(port: ReplicaPort, connect: Connect, node: str) -> None:
    assert port.address is not None
    forged = dataclasses.replace(port.address, token=bytes(16))
    with pytest.raises(ConnectionError):
        await connect(node, forged)
    channel = await connect(node)  # the port serves the next one
    assert not channel.closed.is_set()


async def test_connection_to_another_replica_is_refused(port: ReplicaPort, connect: Connect) -> None:
    with pytest.raises(ConnectionError, match="replica-elsewhere"):
        await connect(replica_id="replica-elsewhere")


async def test_garbage_instead_of_hello_is_dropped(port: ReplicaPort) -> None:
    assert port.address is not None
    for opening in (b"\x00\x00\x00\x00", wire.encode_attach([1]), b"\x05\x00\x00\x00\x01\xff\xff\xff\xff"):
        reader, writer = await asyncio.open_unix_connection(port.address.unix_path)
        writer.write(opening)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, no welcome
        writer.close()


# --- leases a connection does not hold -------------------------------------------------------------------


async def test_attach_of_an_unknown_lease_ends_that_session(
    port: ReplicaPort, runner: ClockedRunner, connect: Connect
) -> None:
    channel = await connect()
    stranger = Reader(channel.attach(9999))
    ended_with = await stranger.finished()
    assert ended_with is not None and ended_with.reason is EndReason.UNKNOWN
    with pytest.raises(ChannelEnded):
        stranger.session.send_audio(noise(1, seed=4))
    # The connection and its other sessions are fine.
    lease = port.lease("ok")
    session = channel.attach(lease.id)
    reader = Reader(session)
    await feed([(session, 4)], seed=5)
    await reader.wait_frames(3)
    session.close()
    assert await ended(lease) is EndReason.RELEASED


async def test_audio_and_release_for_a_lease_not_held_are_refused(
    port: ReplicaPort, runner: ClockedRunner, connect: Connect
) -> None:
    lease = port.lease("held-by-a")
    session = (await connect()).attach(lease.id)
    reader = Reader(session)
    await feed([(session, 3)])
    await reader.wait_frames(2)

    raw_reader, raw_writer = await raw_connection(port)
    raw_writer.write(wire.encode_audio([lease.id], [noise(2, seed=6)]))
    refusal = await next_ended(raw_reader)
    assert (refusal.lease, refusal.code) == (lease.id, EndReason.UNKNOWN.value)
    raw_writer.write(wire.encode_release([lease.id]))  # not its lease: ignored
    raw_writer.write(wire.encode_audio([424242], [noise(1, seed=7)]))
    refusal = await next_ended(raw_reader)
    assert (refusal.lease, refusal.code) == (424242, EndReason.UNKNOWN.value)

    before = len(reader.frames)
    await feed([(session, 4)], seed=8)
    await reader.wait_frames(before + 4)  # the holder is untouched
    assert not lease.ended.done() and runner.slots_used == 1
    raw_writer.close()
    session.close()
    assert await ended(lease) is EndReason.RELEASED


async def test_a_lease_attached_on_one_connection_cannot_be_attached_on_another(
    port: ReplicaPort, runner: ClockedRunner, connect: Connect
) -> None:
    lease = port.lease("one-owner")
    owner = (await connect()).attach(lease.id)
    other_channel = await connect(OTHER_NODE)
    thief = Reader(other_channel.attach(lease.id))
    ended_with = await thief.finished()
    assert ended_with is not None and ended_with.reason is EndReason.UNKNOWN
    assert not other_channel.closed.is_set()

    reader = Reader(owner)
    await feed([(owner, 6)], seed=9)
    await reader.wait_frames(5)  # still the owner's
    assert not lease.ended.done()
    owner.close()
    assert await ended(lease) is EndReason.RELEASED


# --- connections and replicas going away -----------------------------------------------------------------


async def test_closing_the_connection_releases_its_leases(
    port: ReplicaPort, runner: ClockedRunner, connect: Connect
) -> None:
    leases = [port.lease("x"), port.lease("y")]
    kept = port.lease("on-another-connection")
    channel = await connect()
    readers = [Reader(channel.attach(lease.id)) for lease in leases]
    other = Reader((await connect()).attach(kept.id))
    await feed([(r.session, 4) for r in [*readers, other]], seed=10)
    await asyncio.gather(*(r.wait_frames(3) for r in readers))
    assert runner.slots_used == 3

    await channel.close()
    assert channel.closed.is_set()
    for reader in readers:
        ended_with = await reader.finished()
        assert ended_with is not None and ended_with.reason is EndReason.LOST
        with pytest.raises(ChannelEnded):
            reader.session.send_audio(noise(1, seed=11))
    assert [await ended(lease) for lease in leases] == [EndReason.LOST] * 2
    await until(lambda: runner.slots_used == 1)
    assert port.sessions == 1 and not kept.ended.done()  # only that connection's leases
    with pytest.raises(ChannelEnded):
        channel.attach(kept.id)
    other.session.close()
    assert await ended(kept) is EndReason.RELEASED


@pytest.mark.parametrize("how", ["abort", "malformed-message"])
async def test_a_connection_that_drops_loses_its_leases(
    port: ReplicaPort, runner: ClockedRunner, how: str
) -> None:
    leases = [port.lease("p"), port.lease("q")]
    reader, writer = await raw_connection(port)
    writer.write(wire.encode_attach([lease.id for lease in leases]))
    writer.write(wire.encode_audio([leases[0].id], [noise(3, seed=12)]))
    message = await asyncio.wait_for(read_message(reader), 5)  # attached and served
    assert isinstance(message, wire.Frames) and message.leases == (leases[0].id,)
    if how == "abort":
        writer.transport.abort()
    else:
        writer.write(b"\x02\x00\x00\x00\xff\xff")  # an unknown kind
    assert [await ended(lease) for lease in leases] == [EndReason.LOST] * 2
    assert (runner.slots_used, port.sessions) == (0, 0)
    writer.close()


async def test_replica_closing_ends_every_session(
    port: ReplicaPort, runner: ClockedRunner, connect: Connect
) -> None:
    leases = [port.lease("m"), port.lease("n")]
    channels = [await connect(), await connect(OTHER_NODE)]
    readers = [Reader(c.attach(lease.id)) for c, lease in zip(channels, leases, strict=True)]
    await feed([(r.session, 4) for r in readers], seed=13)
    await asyncio.gather(*(r.wait_frames(3) for r in readers))

    await port.close()
    for reader in readers:
        ended_with = await reader.finished()
        assert ended_with is not None and ended_with.reason is EndReason.LOST
    assert [await ended(lease) for lease in leases] == [EndReason.LOST] * 2
    assert (runner.slots_used, port.sessions) == (0, 0)
    for channel in channels:  # the ingress learns the replica is gone, and stops using its channel
        await asyncio.wait_for(channel.closed.wait(), 5)
    assert port.address is not None
    with pytest.raises(ConnectionError):
        await ReplicaChannel.connect(port.address, REPLICA_ID, REPLICA_NODE)


# --- the replica's clock, seen from the client -----------------------------------------------------------


@pytest.mark.runner(max_lag_s=0.3)
async def test_a_session_that_falls_behind_is_ended(
    port: ReplicaPort,
    runner: ClockedRunner,
    engine: BatchedEngine,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_tick = engine.tick

    def slow_tick() -> dict[int, EngineFrame]:
        time.sleep(0.25)  # three periods a tick: real-time input piles up, past any catching up
        return real_tick()

    monkeypatch.setattr(engine, "tick", slow_tick)
    lease = port.lease("slow")
    session = (await connect()).attach(lease.id)
    reader = Reader(session)
    feeder = asyncio.get_running_loop().create_task(feed([(session, 60)], seed=14))
    ended_with = await reader.finished(timeout=10)
    assert ended_with is not None and ended_with.reason is EndReason.FELL_BEHIND
    assert "behind real time" in ended_with.detail
    assert await ended(lease) is EndReason.FELL_BEHIND
    assert (runner.slots_used, port.sessions) == (0, 0)
    with pytest.raises(ChannelEnded) as raised:  # the sender's next frame hears about it too
        await asyncio.wait_for(feeder, 5)
    assert raised.value.reason is EndReason.FELL_BEHIND


@pytest.mark.parametrize(
    "refuses",
    [
        pytest.param(True, marks=pytest.mark.runner(admit_fraction=0.05), id="admit-fraction-0.05"),
        pytest.param(False, marks=pytest.mark.runner(admit_fraction=None), id="admit-fraction-none"),
    ],
)
async def test_admission_follows_the_tick_budget(
    port: ReplicaPort, runner: ClockedRunner, connect: Connect, refuses: bool
) -> None:
    lease = port.lease("busy")
    session = (await connect()).attach(lease.id)
    reader = Reader(session)
    feeder = asyncio.get_running_loop().create_task(feed([(session, 25)], seed=16))
    await reader.wait_frames(13)  # > 1 s of busy ticks
    assert runner.slots_used == 1 < SLOTS
    if refuses:
        assert not runner.capacity().admitting
        with pytest.raises(TickBudgetFull):
            port.lease("refused")
        assert (runner.slots_used, port.sessions) == (1, 1)  # nothing taken
        extra = port.lease("forced", check_budget=False)  # the budget is advisory when asked
    else:
        extra = port.lease("admitted")
    assert runner.slots_used == 2
    port.release(extra.id)
    assert await ended(extra) is EndReason.RELEASED
    await feeder
    session.close()
    assert await ended(lease) is EndReason.RELEASED


# --- the ingress's pool of channels ----------------------------------------------------------------------


async def test_pool_connects_once_and_forgets_closed_channels(port: ReplicaPort) -> None:
    assert port.address is not None
    pool = ChannelPool(REPLICA_NODE)
    try:
        first, again = await asyncio.gather(
            pool.get(REPLICA_ID, port.address), pool.get(REPLICA_ID, port.address)
        )
        assert first is again and pool.channels() == [first]
        await first.close()
        assert pool.channels() == []
        fresh = await pool.get(REPLICA_ID, port.address)
        assert fresh is not first and not fresh.closed.is_set()
        with pytest.raises(ConnectionError):
            await pool.get("replica-elsewhere", port.address)
        assert pool.channels() == [fresh]
    finally:
        await pool.close()
    assert fresh.closed.is_set() and pool.channels() == []
