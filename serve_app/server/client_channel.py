"""The client side of one realtime session, whatever carries it: a WebSocket, or a WebRTC call's
`oai-events` data channel (serve_app/webrtc/channel.py).

`RealtimeConnection` (connection.py) drives a session through this port alone, so admission, limits and
the pumps are the same for both transports.
"""

from __future__ import annotations

from typing import Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect

from serve_app.session.outbox import OutgoingEvent


class ClientChannel(Protocol):
    headers: dict[str, str]
    """The request's headers, names lower-cased (the API key, `Origin`, the beta header)."""
    query: dict[str, str]
    """The request's query parameters (`model`, `intent`, `call_id`)."""
    subprotocols: list[str]
    """The WebSocket subprotocols the client offered (empty for a call)."""

    async def accept(self, subprotocol: str | None) -> None:
        """Before anything is sent: complete the handshake (a WebSocket's upgrade)."""
        ...

    async def receive_text(self) -> str | bytes | None:
        """The next client message; None once the client has gone."""
        ...

    async def send(self, event: OutgoingEvent) -> None:
        """One server event (a channel may route it: a call plays audio deltas on its track)."""
        ...

    async def close(self, code: int) -> None:
        """End the client side (a WebSocket close code; a call hangs up). Idempotent."""
        ...


class WebSocketChannel:
    """A realtime WebSocket as a ClientChannel."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.headers = {k.lower(): v for k, v in ws.headers.items()}
        self.query = dict(ws.query_params)
        self.subprotocols: list[str] = list(ws.scope.get("subprotocols") or [])

    async def accept(self, subprotocol: str | None) -> None:
        await self.ws.accept(subprotocol=subprotocol)

    async def receive_text(self) -> str | bytes | None:
        try:
            message = await self.ws.receive()
        except WebSocketDisconnect:
            return None
        if message["type"] == "websocket.disconnect":
            return None
        data = message.get("text")
        if data is None:
            data = message.get("bytes") or b""
        return data

    async def send(self, event: OutgoingEvent) -> None:
        await self.ws.send_text(event.text)

    async def close(self, code: int) -> None:
        await self.ws.close(code=code)
