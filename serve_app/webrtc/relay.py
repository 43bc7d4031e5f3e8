"""Hangups and sidebands for a call another ingress replica holds: passed to that replica's private port
(owners.py) with the client's credentials, so the owner authorises them as it would its own requests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence

import httpx
import websockets
from starlette.responses import Response
from starlette.websockets import WebSocket
from websockets.typing import Subprotocol

logger = logging.getLogger(__name__)

CREDENTIAL_HEADERS = ("authorization", "api-key")
"""What a forwarded request carries of the client's headers (the key; query and subprotocols go as sent)."""
CONNECT_TIMEOUT_S = 5.0


def _credentials(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: headers[name] for name in CREDENTIAL_HEADERS if name in headers}


async def forward_hangup(
    address: str, path: str, headers: Mapping[str, str], query: Mapping[str, str], timeout_s: float
) -> Response | None:
    """The owner's answer to the hangup (status and body), None when it cannot be reached (it is gone)."""
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S)) as client:
            answer = await client.post(f"http://{address}{path}", headers=_credentials(headers), params=query)
    except httpx.HTTPError as exc:
        logger.warning("hangup: the call's replica at %s did not answer: %r", address, exc)
        return None
    return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))


async def relay_sideband(
    ws: WebSocket,
    address: str,
    path_and_query: str,
    headers: Mapping[str, str],
    subprotocols: Sequence[str],
    accept_headers: list[tuple[bytes, bytes]],
) -> bool:
    """Join the owner's sideband for the client and relay both ways until either side closes (the owner's
    close code reaches the client). False, with `ws` untouched, when the owner cannot be reached."""
    try:
        upstream = await websockets.connect(
            f"ws://{address}{path_and_query}",
            additional_headers=_credentials(headers),
            subprotocols=[Subprotocol(p) for p in subprotocols] or None,
            open_timeout=CONNECT_TIMEOUT_S,
            max_size=None,  # the owner's events, as it would send them to the client directly
        )
    except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
        logger.warning("sideband: the call's replica at %s did not answer: %r", address, exc)
        return False
    async with upstream:
        await ws.accept(subprotocol=upstream.subprotocol, headers=accept_headers)

        async def down() -> None:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for message in upstream:
                    if isinstance(message, str):
                        await ws.send_text(message)
                    else:
                        await ws.send_bytes(message)

        async def up() -> None:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                await upstream.send(data)

        from_owner = asyncio.create_task(down())
        tasks = [from_owner, asyncio.create_task(up())]
        done: set[asyncio.Task[None]] = set()
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if from_owner in done and upstream.close_code is not None:  # the owner closed: say why
                with contextlib.suppress(Exception):
                    await ws.close(code=upstream.close_code, reason=upstream.close_reason or "")
    return True
