"""The uvicorn keepalive defaults the ingress replica sets before Serve builds its server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import uvicorn

from serve_app.server import keepalive


@pytest.fixture
def restore_uvicorn() -> Iterator[None]:
    yield
    uvicorn.Config.__init__ = keepalive._ORIGINAL_INIT  # type: ignore[method-assign]


@pytest.mark.usefixtures("restore_uvicorn")
def test_servers_built_afterwards_ping_as_configured_unless_their_builder_says_otherwise() -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("never called")

    assert uvicorn.Config(app).ws_ping_interval == 20.0  # uvicorn's own default, which Serve uses
    keepalive.websocket_keepalive_defaults(3.0, 2.0)
    built = uvicorn.Config(app, host="127.0.0.1", port=1)
    assert (built.ws_ping_interval, built.ws_ping_timeout, built.port) == (3.0, 2.0, 1)
    explicit = uvicorn.Config(app, ws_ping_interval=9.0)
    assert (explicit.ws_ping_interval, explicit.ws_ping_timeout) == (9.0, 2.0)
