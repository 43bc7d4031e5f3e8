from __future__ import annotations

import pytest

from serve_app.protocol.dialect import Dialect, api_key_from_handshake, detect_dialect, select_subprotocol


@pytest.mark.parametrize(
    ("headers", "subprotocols", "forced", "expected"),
    [
        ({}, [], "auto", Dialect.GA),
        ({"OpenAI-Beta": "realtime=v1"}, [], "auto", Dialect.BETA),
        ({"openai-beta": "REALTIME=V1"}, [], "auto", Dialect.BETA),
        ({"OPENAI-BETA": "assistants=v2, realtime=v1"}, [], "auto", Dialect.BETA),
        ({"OpenAI-Beta": "assistants=v2"}, [], "auto", Dialect.GA),
        ({}, ["realtime", "openai-insecure-api-key.k", "openai-beta.realtime-v1"], "auto", Dialect.BETA),
        ({}, ["realtime"], "auto", Dialect.GA),
        ({"OpenAI-Beta": "realtime=v1"}, [], "ga", Dialect.GA),
        ({}, [], "beta", Dialect.BETA),
    ],
)
def test_detect_dialect(
    headers: dict[str, str], subprotocols: list[str], forced: str, expected: Dialect
) -> None:
    assert detect_dialect(headers, subprotocols, forced) is expected  # type: ignore[arg-type]


def test_select_subprotocol_only_when_offered() -> None:
    assert select_subprotocol(["realtime", "openai-insecure-api-key.x"]) == "realtime"
    assert select_subprotocol([]) is None
    assert select_subprotocol(["openai-beta.realtime-v1"]) is None


@pytest.mark.parametrize(
    ("headers", "subprotocols", "query", "expected"),
    [
        ({"Authorization": "Bearer sk-1"}, [], {}, "sk-1"),
        ({"authorization": "bearer  sk-2 "}, [], {}, "sk-2"),
        ({}, ["realtime", "openai-insecure-api-key.sk-3"], {}, "sk-3"),
        ({"api-key": "sk-4"}, [], {}, "sk-4"),
        ({"Api-Key": "sk-5"}, [], {}, "sk-5"),
        ({}, [], {"api-key": "sk-6"}, "sk-6"),
        ({"Authorization": "Bearer a"}, ["openai-insecure-api-key.b"], {"api-key": "c"}, "a"),
        ({"Authorization": "Basic xyz"}, [], {}, None),
        ({"Authorization": "Bearer "}, ["openai-insecure-api-key."], {"api-key": ""}, None),
        ({}, [], {}, None),
    ],
)
def test_api_key_from_handshake(
    headers: dict[str, str], subprotocols: list[str], query: dict[str, str], expected: str | None
) -> None:
    assert api_key_from_handshake(headers, subprotocols, query) == expected
