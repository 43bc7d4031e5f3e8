"""A real tiny engine, clocked, behind a ReplicaPort: what the channel tests talk to."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from serve_app.constants import FRAME_S
from serve_app.engine.batch import BatchedEngine
from serve_app.engine.capacity import TickBudget
from serve_app.engine.loader import LoadedModel
from serve_app.engine.runner import ClockedRunner
from serve_app.engine.spec import SamplingParams
from serve_app.engine.tick_stats import TickStats
from serve_app.transport.address import ChannelAddress
from serve_app.transport.ingress_channel import ReplicaChannel
from serve_app.transport.replica_port import ReplicaPort
from tests.engine.conftest import _tiny_cache, tiny_dir, tiny_model, tiny_persona, tiny_persona_dir

# the engine tests' fixtures, shared
__all__ = ["_tiny_cache", "tiny_dir", "tiny_model", "tiny_persona", "tiny_persona_dir"]

REPLICA_ID = "replica-under-test"
REPLICA_NODE = "node-a"
OTHER_NODE = "node-b"
SLOTS = 3

Connect = Callable[..., Awaitable[ReplicaChannel]]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "runner(max_lag_s=..., admit_fraction=...): options of the test's ClockedRunner"
    )


@pytest.fixture
def engine(tiny_model: LoadedModel) -> Iterator[BatchedEngine]:
    with BatchedEngine(tiny_model, slots=SLOTS, sampling=SamplingParams(use_sampling=False)) as engine:
        engine.warmup()
        yield engine


@pytest.fixture
def ticks() -> list[TickStats]:
    """Every tick of the test's runner."""
    return []


@pytest.fixture
def runner(
    request: pytest.FixtureRequest, engine: BatchedEngine, ticks: list[TickStats]
) -> Iterator[ClockedRunner]:
    marker = request.node.get_closest_marker("runner")
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    if "admit_fraction" in options:
        options["budget"] = TickBudget(
            engine.slots_total, admit_fraction=options.pop("admit_fraction"), period_s=FRAME_S
        )
    runner = ClockedRunner(engine, period_s=FRAME_S, on_tick=ticks.append, **options)
    runner.start()
    yield runner
    runner.stop()


@pytest_asyncio.fixture(loop_scope="function")
async def port(runner: ClockedRunner) -> AsyncIterator[ReplicaPort]:
    """Started inside the test's event loop, on the Unix socket and TCP on 127.0.0.1."""
    port = ReplicaPort(runner, REPLICA_ID, node_id=REPLICA_NODE)
    address = await port.start(tcp_host="127.0.0.1")
    assert address.tcp_host == "127.0.0.1" and address.tcp_port > 0
    yield port
    await port.close()


@pytest_asyncio.fixture(loop_scope="function")
async def connect(port: ReplicaPort) -> AsyncIterator[Connect]:
    """Open ReplicaChannels to the port (same node: Unix socket; `node=OTHER_NODE`: TCP); closed after."""
    channels: list[ReplicaChannel] = []

    async def open_channel(
        node: str = REPLICA_NODE, address: ChannelAddress | None = None, replica_id: str = REPLICA_ID
    ) -> ReplicaChannel:
        assert port.address is not None
        channel = await ReplicaChannel.connect(address or port.address, replica_id, node)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        await channel.close()
