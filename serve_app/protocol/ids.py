"""Server-minted ids in the hosted service's shapes (`event_…`, `item_…`, `resp_…`, `conv_…`).

Clients do not parse them; they only need them unique, and stable across every event that names them.
"""

from __future__ import annotations

import secrets


def _mint(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def new_event_id() -> str:
    return _mint("event")


def new_item_id() -> str:
    return _mint("item")


def new_response_id() -> str:
    return _mint("resp")


def new_conversation_id() -> str:
    return _mint("conv")
