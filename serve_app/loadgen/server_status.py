"""The server's own view during a run (`GET /v1/status`: slots, tick times, capacity), best effort."""

from __future__ import annotations

import json
import urllib.request
from typing import Any
from urllib.parse import urlsplit, urlunsplit

TIMEOUT_S = 3.0


def status_url(realtime_url: str) -> str:
    """`ws://host/prefix/v1/realtime?model=m` → `http://host/prefix/v1/status`."""
    parts = urlsplit(realtime_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    prefix = parts.path.rstrip("/").removesuffix("realtime").rstrip("/").removesuffix("/v1")
    return urlunsplit((scheme, parts.netloc, f"{prefix}/v1/status", "", ""))


def fetch_status(realtime_url: str, api_key: str | None = None) -> dict[str, Any] | None:
    """The status JSON, or None when the server has no such endpoint or does not answer in time."""
    request = urllib.request.Request(status_url(realtime_url))
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            body = json.loads(response.read())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None
