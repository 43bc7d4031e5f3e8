"""Which Realtime dialect a client speaks (GA or the older beta), and what its handshake carries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Literal

BETA_HEADER_TOKEN = "realtime=v1"
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
REALTIME_SUBPROTOCOL = "realtime"
API_KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."


class Dialect(StrEnum):
    GA = "ga"
    BETA = "beta"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that also works on a plain dict."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def detect_dialect(
    headers: Mapping[str, str],
    subprotocols: Sequence[str],
    forced: Literal["auto", "ga", "beta"] = "auto",
) -> Dialect:
    """Beta if the handshake carries `OpenAI-Beta: realtime=v1` or offers the beta subprotocol; else GA.

    `forced` exists for header-less beta clients (e.g. a browser that cannot set headers)."""
    if forced != "auto":
        return Dialect(forced)
    beta_header = _header(headers, "openai-beta") or ""
    # The header may list several betas: "assistants=v2, realtime=v1".
    if any(token.strip().lower() == BETA_HEADER_TOKEN for token in beta_header.split(",")):
        return Dialect.BETA
    if any(protocol.strip().lower() == BETA_SUBPROTOCOL for protocol in subprotocols):
        return Dialect.BETA
    return Dialect.GA


def select_subprotocol(offered: Sequence[str]) -> str | None:
    """Browser clients fail the handshake unless `realtime` is selected; SDK clients offer none."""
    return REALTIME_SUBPROTOCOL if REALTIME_SUBPROTOCOL in offered else None


def api_key_from_handshake(
    headers: Mapping[str, str],
    subprotocols: Sequence[str],
    query: Mapping[str, str],
) -> str | None:
    """The client's API key, from (in order) `Authorization: Bearer`, the browser subprotocol
    `openai-insecure-api-key.<key>`, the Azure-style `api-key` header, or the `api-key` query parameter."""
    authorization = _header(headers, "authorization")
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    for protocol in subprotocols:
        protocol = protocol.strip()
        if protocol.startswith(API_KEY_SUBPROTOCOL_PREFIX) and len(protocol) > len(
            API_KEY_SUBPROTOCOL_PREFIX
        ):
            return protocol[len(API_KEY_SUBPROTOCOL_PREFIX) :]
    header_key = _header(headers, "api-key")
    if header_key and header_key.strip():
        return header_key.strip()
    query_key = query.get("api-key")
    if query_key and query_key.strip():
        return query_key.strip()
    return None
