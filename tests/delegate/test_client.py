"""The delegate's HTTP client against a real local chat server: what it sends, how each failure surfaces
(always a DelegateError, in bounded time), and that the API key appears nowhere but in its header."""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Iterator

import httpx
import pytest

from serve_app.delegate.client import DelegateClient
from serve_app.delegate.config import DelegateConfig
from serve_app.delegate.messages import DelegateError
from serve_app.delegate.scripted_server import (
    ScriptedChatServer,
    reply_hang,
    reply_status,
    reply_text,
    reply_tool_calls,
)
from serve_app.net import free_port

KEY_ENV = "TEST_DELEGATE_API_KEY"
KEY = "sk-test-0123456789abcdef-secret"
REQUEST = {"model": "whatever", "messages": [{"role": "user", "content": "Hi"}], "stream": False}


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(KEY_ENV, KEY)
    yield KEY


def config(base_url: str, **overrides: object) -> DelegateConfig:
    return DelegateConfig.model_validate(
        {"base_url": base_url, "model": "gpt-test", "api_key_env": KEY_ENV, "timeout_s": 5, **overrides}
    )


async def failure(client: DelegateClient) -> DelegateError:
    with pytest.raises(DelegateError) as raised:
        await client.complete(REQUEST)
    return raised.value


def assert_no_key(error: DelegateError, caplog: pytest.LogCaptureFixture) -> None:
    texts = [str(error), repr(error), error.detail, "".join(traceback.format_exception(error)), caplog.text]
    assert all(KEY not in text for text in texts)


async def test_a_reply_comes_back_and_the_request_carries_model_max_tokens_and_bearer_key(key: str) -> None:
    with ScriptedChatServer([reply_text("Hello."), reply_tool_calls([("get_time", {})])]) as chat:
        client = DelegateClient(config(chat.base_url + "/", max_tokens=32))
        try:
            first = await client.complete(REQUEST)
            second = await client.complete(REQUEST)
        finally:
            await client.aclose()
    assert first["choices"][0]["message"]["content"] == "Hello."
    assert second["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_time"
    assert len(chat.requests) == 2
    headers, body = chat.requests[0]
    assert headers["authorization"] == f"Bearer {key}"
    assert body == {**REQUEST, "model": "gpt-test", "max_tokens": 32}  # the configured model wins


async def test_without_a_key_no_authorization_is_sent_and_max_tokens_none_keeps_the_bodys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with ScriptedChatServer([reply_text("Hi.")]) as chat:
        client = DelegateClient(config(chat.base_url, max_tokens=None))
        await client.complete({**REQUEST, "max_tokens": 7})
        await client.aclose()
    headers, body = chat.requests[0]
    assert "authorization" not in headers
    assert body["max_tokens"] == 7


async def test_an_http_error_is_delegate_failed_with_its_status_and_the_start_of_its_body(
    key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = f"upstream broke; you sent {key}; " + "x" * 1000
    with ScriptedChatServer(
        [reply_status(500, body), reply_status(429, {"error": {"message": "slow"}})]
    ) as chat:
        client = DelegateClient(config(chat.base_url))
        first = await failure(client)
        second = await failure(client)
        await client.aclose()
    assert first.code == "delegate_failed" and "HTTP 500" in first.detail and "upstream broke" in first.detail
    assert first.detail.count("x") < 200  # at most 200 characters of the body
    assert second.code == "delegate_failed" and "HTTP 429" in second.detail and "slow" in second.detail
    assert_no_key(first, caplog)
    assert_no_key(second, caplog)


async def test_a_reply_that_is_not_a_json_object_is_delegate_failed(key: str) -> None:
    with ScriptedChatServer([reply_status(200, "<html>gateway</html>"), reply_status(200, "[1, 2]")]) as chat:
        client = DelegateClient(config(chat.base_url))
        errors = [await failure(client), await failure(client)]
        await client.aclose()
    assert [e.code for e in errors] == ["delegate_failed"] * 2
    assert "<html>gateway</html>" in errors[0].detail and "[1, 2]" in errors[1].detail


async def test_a_delegate_that_hangs_is_delegate_timeout_within_its_budget(
    key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with ScriptedChatServer([reply_hang(10), reply_text("Back.")]) as chat:
        client = DelegateClient(config(chat.base_url, timeout_s=0.5))
        start = time.monotonic()
        error = await failure(client)
        elapsed = time.monotonic() - start
        after = await client.complete(REQUEST)  # the client is still usable
        await client.aclose()
    assert error.code == "delegate_timeout" and "0.5 s" in error.detail
    assert 0.45 <= elapsed < 1.0
    assert after["choices"][0]["message"]["content"] == "Back."
    assert_no_key(error, caplog)


async def test_an_unreachable_delegate_is_delegate_failed(key: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = DelegateClient(config(f"http://127.0.0.1:{free_port()}/v1?key={key}"))
    start = time.monotonic()
    error = await failure(client)
    await client.aclose()
    assert error.code == "delegate_failed" and "ConnectError" in error.detail
    assert time.monotonic() - start < 5
    assert_no_key(error, caplog)


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (httpx.ReadTimeout("read timed out"), "delegate_timeout"),
        (httpx.RemoteProtocolError("peer closed"), "delegate_failed"),
    ],
)
async def test_transport_errors_become_delegate_errors(key: str, raised: Exception, code: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {key}"
        raise raised

    client = DelegateClient(config("http://delegate.invalid/v1"), transport=httpx.MockTransport(handler))
    error = await failure(client)
    await client.aclose()
    assert error.code == code and KEY not in str(error)


async def test_calls_run_concurrently_on_one_client(key: str) -> None:
    with ScriptedChatServer([reply_hang(0.4), reply_hang(0.4), reply_hang(0.4)]) as chat:
        client = DelegateClient(config(chat.base_url))
        start = time.monotonic()
        replies = await asyncio.gather(*(client.complete(REQUEST) for _ in range(3)))
        elapsed = time.monotonic() - start
        await client.aclose()
    assert len(replies) == 3 and elapsed < 1.0
