"""Which ingress replica holds a call, and its private port, for hangups and sidebands that land elsewhere.

A call's media ends in the process that answered it, but the front (HAProxy) sends each later request to
any ingress replica. Each replica therefore names itself in its call ids (`rtc_<owner><hex>`) and serves
the call routes on a private port of its node's address (`OwnerPort`); a replica that gets a request for
another owner's call asks `CallOwners` where that owner listens and forwards it (relay.py). The address
comes only from that directory, where replicas publish their own: a client picks an owner name, never a
host or port (no request can make the server connect anywhere else). In-process there is no directory
(`Calls(owners=None)`): every call is local.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from typing import Protocol

import uvicorn
from starlette.types import ASGIApp

logger = logging.getLogger(__name__)

CALL_ID_PREFIX = "rtc_"
CALL_ID_RANDOM_HEX = 24
"""The random tail of a call id; what precedes it (after `rtc_`) is the owner."""
MAX_OWNER_CHARS = 64
INGRESS_HEADER = "X-Moshi-Ingress"
"""Response header (calls, hangups, sidebands): the owner name of the replica that took the request."""
START_TIMEOUT_S = 10.0


class CallOwners(Protocol):
    """The directory of the ingress replicas' private call ports (deployments/call_owners.py on Ray)."""

    owner: str
    """This replica's name in its call ids: unique per replica process (a restarted replica gets a new one,
    so a call of its predecessor is `call_not_found`, never another call)."""
    host: str
    """The address this replica's private port binds to, reachable from the other ingress nodes."""

    async def publish(self, address: str) -> None:
        """Announce this replica's private port ("host:port") under `owner`."""

    async def locate(self, owner: str) -> str | None:
        """The private "host:port" of `owner`, None when no live replica has that name."""

    async def withdraw(self) -> None:
        """This replica stops: its name leaves the directory."""


def new_call_id(owner: str, random_hex: str) -> str:
    assert len(random_hex) == CALL_ID_RANDOM_HEX
    return f"{CALL_ID_PREFIX}{owner}{random_hex}"


def owner_of(call_id: str) -> str | None:
    """The owner part of a call id ("" for an in-process call), None for what is no call id of ours."""
    if not call_id.startswith(CALL_ID_PREFIX):
        return None
    body = call_id[len(CALL_ID_PREFIX) :]
    if len(body) <= CALL_ID_RANDOM_HEX or len(body) > CALL_ID_RANDOM_HEX + MAX_OWNER_CHARS:
        return "" if len(body) == CALL_ID_RANDOM_HEX else None
    owner = body[:-CALL_ID_RANDOM_HEX]
    return owner if owner.isascii() and owner.isalnum() else None


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The replica's process owns its signals (uvicorn would take SIGTERM/SIGINT on the main thread).
        yield


class OwnerPort:
    """The call routes (owner_routes in routes.py) on `owners.host`:<ephemeral>, served by uvicorn in this
    loop (the loop the calls live in), published in the directory while it listens."""

    def __init__(
        self, app: ASGIApp, owners: CallOwners, ping_interval_s: float, ping_timeout_s: float
    ) -> None:
        self._owners = owners
        self._host = owners.host
        self._server = _Server(
            uvicorn.Config(
                app,
                lifespan="off",  # the app's own lifespan is the public app's
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=1,  # the calls are closed first; a relay left over is cut
                ws_ping_interval=ping_interval_s,
                ws_ping_timeout=ping_timeout_s,
            )
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Listen and publish; returns "host:port"."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, 0))
        sock.listen(128)
        sock.setblocking(False)
        port = sock.getsockname()[1]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if self._task.done() or time.monotonic() > deadline:
                raise RuntimeError(f"the private call port on {self._host} did not start")
            await asyncio.sleep(0.01)
        address = f"[{self._host}]:{port}" if family == socket.AF_INET6 else f"{self._host}:{port}"
        await self._owners.publish(address)
        logger.info(
            "call routes of owner %s also on %s (for the other ingress replicas)", self._owners.owner, address
        )
        return address

    async def stop(self) -> None:
        if self._task is None:
            return
        with contextlib.suppress(Exception):  # the directory gone too (shutdown): nothing to withdraw from
            await asyncio.wait_for(self._owners.withdraw(), START_TIMEOUT_S)
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, START_TIMEOUT_S)
