"""The ingress's channels, one per model replica it has sessions on; connects once, even when asked
concurrently, and forgets a channel once it closed."""

from __future__ import annotations

import asyncio

from serve_app.transport.address import ChannelAddress
from serve_app.transport.ingress_channel import ReplicaChannel


class ChannelPool:
    def __init__(self, node_id: str) -> None:
        self._node_id = node_id
        self._channels: dict[str, asyncio.Task[ReplicaChannel]] = {}

    async def get(self, replica_id: str, address: ChannelAddress) -> ReplicaChannel:
        task = self._channels.get(replica_id)
        if task is None or not _usable(task):
            task = asyncio.get_running_loop().create_task(
                ReplicaChannel.connect(address, replica_id, self._node_id)
            )
            self._channels[replica_id] = task
        try:
            return await asyncio.shield(task)
        except ConnectionError:
            if self._channels.get(replica_id) is task:
                del self._channels[replica_id]
            raise

    def channels(self) -> list[ReplicaChannel]:
        return [t.result() for t in self._channels.values() if t.done() and _usable(t)]

    async def close(self) -> None:
        for channel in self.channels():
            await channel.close()
        self._channels.clear()


def _usable(task: asyncio.Task[ReplicaChannel]) -> bool:
    """Connecting (not done yet) or connected and open."""
    if not task.done():
        return True
    return not task.cancelled() and task.exception() is None and not task.result().closed.is_set()
