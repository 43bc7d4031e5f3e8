"""The delegate's HTTP client: one Chat Completions call, bounded in time, failing only with DelegateError.

Its texts never carry the API key: it is sent as a header and scrubbed from every detail, since a server's
error body or an exception may echo what it was given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import httpx

from serve_app.delegate.config import DelegateConfig
from serve_app.delegate.messages import DelegateError

__all__ = ["DelegateClient"]

_BODY_CHARS = 200
"""How much of a failed reply's body an error quotes."""


class DelegateClient:
    """One per delegate configuration (its connections are reused across calls)."""

    def __init__(self, config: DelegateConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._config = config
        self._key = config.api_key()
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        self._url = f"{config.base_url.rstrip('/')}/chat/completions"
        # httpx's own timeout is a backstop; the whole call is bounded in complete().
        self._http = httpx.AsyncClient(headers=headers, timeout=config.timeout_s, transport=transport)

    def _failed(self, code: str, detail: str) -> DelegateError:
        if self._key:
            detail = detail.replace(self._key, "***")
        return DelegateError(code, detail)

    async def complete(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The delegate's reply to a Chat Completions request (the configured model and max_tokens win)."""
        request = {**body, "model": self._config.model}
        if self._config.max_tokens is not None:
            request["max_tokens"] = self._config.max_tokens
        timeout_s = self._config.timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._http.post(self._url, json=request)
        except (TimeoutError, httpx.TimeoutException):
            raise self._failed("delegate_timeout", f"no answer within {timeout_s:g} s") from None
        except httpx.HTTPError as error:
            # `from None`: the httpx error holds the request, headers and all.
            raise self._failed("delegate_failed", f"{self._url} {type(error).__name__}: {error}") from None
        text = response.text[:_BODY_CHARS]
        if not response.is_success:
            raise self._failed("delegate_failed", f"HTTP {response.status_code} from {self._url}: {text}")
        try:
            reply = response.json()
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise self._failed("delegate_failed", f"the reply is not a JSON object: {text!r}")
        return reply

    async def aclose(self) -> None:
        await self._http.aclose()
