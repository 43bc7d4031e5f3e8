"""WebSocket keepalive for the uvicorn server that Serve starts for the ingress replica.

A client that stops reading its socket also stops answering pings: its library only sees a ping when it
reads. A ping whose pong does not come within the timeout makes uvicorn close the connection, which ends
the session and frees its slot. This is the check that holds whatever sits in between: the socket
buffers of the kernel and of HAProxy (several MB on a loopback or a fast link, i.e. a minute of audio)
absorb a non-reading client's audio long before this ingress's own send queue fills up. Serve builds that
uvicorn server with uvicorn's defaults (a ping every 20 s, 20 s to answer) and no setting to change them,
so the ingress replica sets the defaults before Serve builds it.
"""

from __future__ import annotations

import functools
from typing import Any

import uvicorn

_ORIGINAL_INIT = uvicorn.Config.__init__


def websocket_keepalive_defaults(interval_s: float, timeout_s: float) -> None:
    """Make uvicorn servers built later in this process ping every `interval_s` and close a socket whose
    pong takes longer than `timeout_s`, unless the builder sets them itself."""

    @functools.wraps(_ORIGINAL_INIT)
    def init(self: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("ws_ping_interval", interval_s)
        kwargs.setdefault("ws_ping_timeout", timeout_s)
        _ORIGINAL_INIT(self, *args, **kwargs)

    uvicorn.Config.__init__ = init  # type: ignore[method-assign]
