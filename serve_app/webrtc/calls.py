"""The calls this ingress holds: create (offer → admitted session + answer), hang up, sideband join.

A call is a RealtimeConnection whose client side is a CallChannel, so it is admitted, limited and counted
exactly like a socket (per-key limits, capacity, idle and duration limits, metrics) and holds its model
slot until `RealtimeConnection.run` returns: on hangup, when the peer connection fails or closes, when the
client closes its data channel, when a limit ends the session, or when ICE never connects.

Call ids are `rtc_<owner><hex>`: `owner` names this ingress replica (empty in-process), so that with
several ingress replicas a hangup or sideband request landing on another replica is forwarded to the one
whose process holds the call's media (owners.py, relay.py; docs/ARCHITECTURE.md, "WebRTC calls").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from starlette.websockets import WebSocket

from serve_app.config import AppConfig
from serve_app.protocol.dialect import Dialect, api_key_from_handshake, select_subprotocol
from serve_app.protocol.errors import WS_1008_POLICY_VIOLATION, ClientError, error_payload
from serve_app.protocol.server_events import serialize_server_event
from serve_app.server.client_secrets import Admitted, admit
from serve_app.server.connection import ConnectionShared, RealtimeConnection
from serve_app.server.gateway import ModelGateway
from serve_app.webrtc.channel import CallChannel
from serve_app.webrtc.owners import CALL_ID_RANDOM_HEX, INGRESS_HEADER, CallOwners, new_call_id, owner_of
from serve_app.webrtc.peer import CallPeer
from serve_app.webrtc.sdp_offer import CallOffer, OfferError

logger = logging.getLogger(__name__)

HANGUP_WAIT_S = 5.0
"""How long a hangup waits for the session to end (its slot freed) before it answers."""

LOCATE_TIMEOUT_S = 5.0
"""How long a request for another replica's call waits for the directory's answer (then 404)."""

HTTP_STATUS = {
    "invalid_api_key": 401,
    "origin_not_allowed": 403,
    "model_not_found": 404,
    "too_many_sessions": 429,
    "server_at_capacity": 503,
}
"""The HTTP status of a call refused at admission (any other code: 500)."""


@dataclass
class Call:
    id: str
    channel: CallChannel
    peer: CallPeer
    task: asyncio.Task[None]


class Calls:
    def __init__(
        self,
        gateway: ModelGateway,
        config: AppConfig,
        shared: ConnectionShared,
        owners: CallOwners | None = None,
    ) -> None:
        """`owners`: the directory of the other ingress replicas' call ports (None: every call is here)."""
        self.gateway = gateway
        self.config = config
        self.shared = shared
        self.owners = owners
        self.owner = "" if owners is None else owners.owner
        self._calls: dict[str, Call] = {}
        self._watchdogs: set[asyncio.Task[None]] = set()

    def __contains__(self, call_id: str) -> bool:
        return call_id in self._calls

    async def create(
        self, offer: CallOffer, headers: Mapping[str, str], model: str | None
    ) -> tuple[str, str]:
        """(call id, SDP answer) of an admitted call. Raises OfferError: 400 for an offer aiortc cannot
        answer, else the admission's refusal (HTTP_STATUS)."""
        session = dict(offer.session or {})
        model = model or str(session.pop("model", "") or "") or self.config.models[0].id
        channel = CallChannel(headers, {"model": model})
        connection = RealtimeConnection(channel, self.gateway, self.config, self.shared)
        channel.bind(connection.session)
        if session:
            # The `session` part configures the session from its start, as a client secret's does.
            try:
                connection.session.preset({"type": "realtime", **session})
            except ClientError as exc:
                param = f"session.{exc.param}" if exc.param else "session"
                raise OfferError(400, exc.code, exc.message, param) from None
        peer = CallPeer(channel, self.config.server.webrtc_ice_servers)
        channel.on_close = peer.close
        answer = await peer.answer(offer.sdp)  # before admission: a bad offer costs no slot
        call_id = new_call_id(self.owner, uuid.uuid4().hex[:CALL_ID_RANDOM_HEX])
        task = asyncio.create_task(self._run(call_id, connection, channel))
        refused = await channel.admission
        if refused is not None:
            await channel.close(1000)
            with contextlib.suppress(Exception):
                await task
            code, message = refused
            raise OfferError(HTTP_STATUS.get(code, 500), code, message)
        self._calls[call_id] = Call(call_id, channel, peer, task)
        watchdog = asyncio.create_task(self._watch(call_id, peer, channel))
        self._watchdogs.add(watchdog)
        watchdog.add_done_callback(self._watchdogs.discard)
        logger.info("call %s answered (model %s)", call_id, model)
        return call_id, answer

    async def hangup(self, call_id: str) -> bool:
        """End the call; returns once its session has ended (slot freed). False: no such call here."""
        call = self._calls.get(call_id)
        if call is None:
            return False
        await call.channel.close(1000)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(call.task), HANGUP_WAIT_S)
        return True

    async def join(self, call_id: str, ws: WebSocket, subprotocols: list[str]) -> None:
        """A sideband socket: it follows the call's events until it or the call closes."""
        call = self._calls.get(call_id)
        if call is None or call.channel.closed:
            await self.not_found(call_id, ws, subprotocols)
            return
        await ws.accept(subprotocol=select_subprotocol(subprotocols), headers=self.ingress_headers())
        await call.channel.join(ws)

    async def not_found(self, call_id: str, ws: WebSocket, subprotocols: list[str]) -> None:
        """A sideband for no call we know: accepted, told `call_not_found`, closed."""
        await ws.accept(subprotocol=select_subprotocol(subprotocols), headers=self.ingress_headers())
        error = error_payload(
            "call_not_found", f"No call {call_id!r} on this server.", error_type="invalid_request_error"
        )
        await ws.send_text(serialize_server_event(Dialect.GA, {**error, "event_id": "event_0"}))
        await ws.close(code=WS_1008_POLICY_VIOLATION)

    async def elsewhere(self, call_id: str) -> str | None:
        """The private address of the ingress replica that holds `call_id` when that is another one (None:
        here, or no live replica has its owner name)."""
        owner = owner_of(call_id)
        if self.owners is None or not owner or owner == self.owner or call_id in self._calls:
            return None
        try:
            return await asyncio.wait_for(self.owners.locate(owner), LOCATE_TIMEOUT_S)
        except Exception as exc:  # the directory unreachable: the call cannot be found from here
            logger.warning("cannot look up the replica of call %s: %r", call_id, exc)
            return None

    def ingress_headers(self) -> list[tuple[bytes, bytes]]:
        """INGRESS_HEADER naming this replica (none in-process)."""
        return [(INGRESS_HEADER.lower().encode(), self.owner.encode())] if self.owner else []

    async def close_all(self) -> None:
        for call_id in list(self._calls):
            await self.hangup(call_id)

    async def _run(self, call_id: str, connection: RealtimeConnection, channel: CallChannel) -> None:
        try:
            await connection.run()
        finally:
            await channel.close(1000)
            self._calls.pop(call_id, None)
            logger.info("call %s ended", call_id)

    async def _watch(self, call_id: str, peer: CallPeer, channel: CallChannel) -> None:
        """ICE that never connects must not hold a slot: end the call after the connect timeout."""
        timeout = self.config.server.webrtc_connect_timeout_s
        try:
            await asyncio.wait_for(peer.connected.wait(), timeout)
        except TimeoutError:
            if not channel.closed:
                logger.warning("call %s: no connection after %g s; ending it", call_id, timeout)
                await channel.close(1000)


def key_allowed(
    config: AppConfig, headers: Mapping[str, str], query: Mapping[str, str], subprotocols: Sequence[str] = ()
) -> bool:
    """Whether a request about a call (hangup, sideband) carries a key that could open one: an API key or
    an unexpired `ek_` client secret (client_secrets.admit). Any such key may act on any call it names:
    the unguessable call id is the capability, as with OpenAI's."""
    key = api_key_from_handshake(headers, list(subprotocols), query)
    return isinstance(admit(key, config.server, time.time()), Admitted)
