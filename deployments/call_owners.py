"""The ingress replicas' directory of WebRTC call owners (serve_app/webrtc/owners.py's `CallOwners`).

One small named actor per Serve application holds owner name → private "host:port"; only ingress replicas
write to it (a client's call id names an owner, never an address). Detached, so it outlives the replica
that happened to create it; an idle entry costs nothing, and a replica's entry goes when it stops.
"""

from __future__ import annotations

import os

import ray
from ray import serve
from ray.actor import ActorHandle

from deployments.slot_host import CHANNEL_HOST_ENV


@ray.remote(num_cpus=0)
class CallOwnerRegistry:
    def __init__(self) -> None:
        self._addresses: dict[str, str] = {}

    def publish(self, owner: str, address: str) -> None:
        self._addresses[owner] = address

    def withdraw(self, owner: str) -> None:
        self._addresses.pop(owner, None)

    def locate(self, owner: str) -> str | None:
        return self._addresses.get(owner)


def registry_name(app_name: str) -> str:
    return f"moshi-call-owners:{app_name}"


def registry(app_name: str) -> ActorHandle[CallOwnerRegistry]:
    """The application's directory (created by the first replica that asks)."""
    options = CallOwnerRegistry.options(  # type: ignore[attr-defined]
        name=registry_name(app_name), namespace=serve_namespace(), lifetime="detached", get_if_exists=True
    )
    handle: ActorHandle[CallOwnerRegistry] = options.remote()
    return handle


def serve_namespace() -> str:
    from ray.serve._private.constants import SERVE_NAMESPACE

    return str(SERVE_NAMESPACE)


class RayCallOwners:
    """This ingress replica's view of the directory: its owner name is its Serve replica id, its private
    port binds where the model replicas' frame channels do (the node's address; loopback on one machine)."""

    def __init__(self, app_name: str) -> None:
        self.owner: str = serve.get_replica_context().replica_id.unique_id
        self.host: str = os.environ.get(CHANNEL_HOST_ENV) or ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        self._registry = registry(app_name)

    async def publish(self, address: str) -> None:
        await self._registry.publish.remote(self.owner, address)

    async def locate(self, owner: str) -> str | None:
        address: str | None = await self._registry.locate.remote(owner)
        return address

    async def withdraw(self) -> None:
        await self._registry.withdraw.remote(self.owner)
