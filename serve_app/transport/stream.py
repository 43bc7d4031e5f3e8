"""Reading whole channel messages from an asyncio stream."""

from __future__ import annotations

import asyncio

from serve_app.transport import wire


async def read_message(reader: asyncio.StreamReader) -> wire.Message | None:
    """The next message, or None at a clean end of stream (between messages)."""
    try:
        prefix = await reader.readexactly(wire.PREFIX_BYTES)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    return wire.decode(await reader.readexactly(wire.message_length(prefix)))
