"""Handshake, admission and HTTP endpoints of the WebSocket shell, with raw WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.server.conftest import RunningServer


async def _next_event(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return event


def _url(server: RunningServer, model: str = "moshi-sft", path: str = "/v1/realtime") -> str:
    return f"ws://{server.host}{path}?model={model}"


def test_models_lists_configured_ids(local_server: RunningServer) -> None:
    body = httpx.get(f"{local_server.http_base}/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["moshi-sft", "moshi-base"]


def test_models_say_they_are_random_weights_when_they_are(local_server: RunningServer) -> None:
    body = httpx.get(f"{local_server.http_base}/v1/models").json()
    tiny = {m.id: m.spec.tiny_seed is not None for m in local_server.config.models}
    assert tiny == {"moshi-sft": True, "moshi-base": True}
    assert {m["id"]: m["random_weights"] for m in body["data"]} == tiny


def test_status_gives_each_figure_its_age(local_server: RunningServer) -> None:
    body = httpx.get(f"{local_server.http_base}/v1/status").json()
    local = body["models"]["moshi-sft"]["local"]
    assert local["age_s"] == 0.0 and local["reported_at"] == "now" and "slots_used" in local


def test_healthz_is_ok_once_models_warmed_up(local_server: RunningServer) -> None:
    response = httpx.get(f"{local_server.http_base}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_realtime_subprotocol_selected_only_when_offered(local_server: RunningServer) -> None:
    async with websockets.connect(_url(local_server), subprotocols=["realtime"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "realtime"
        assert (await _next_event(ws))["type"] == "session.created"
    async with websockets.connect(_url(local_server)) as ws:
        assert ws.subprotocol is None
        assert (await _next_event(ws))["type"] == "session.created"


async def test_alias_path_and_beta_subprotocol(local_server: RunningServer) -> None:
    offered = ["realtime", "openai-insecure-api-key.sk-x", "openai-beta.realtime-v1"]
    async with websockets.connect(_url(local_server, path="/realtime"), subprotocols=offered) as ws:  # type: ignore[arg-type]
        assert (await _next_event(ws))["type"] == "session.created"
        assert (await _next_event(ws))["type"] == "conversation.created"  # beta-only event


async def test_unknown_model_gets_error_then_close(local_server: RunningServer) -> None:
    async with websockets.connect(_url(local_server, model="gpt-nope")) as ws:
        event = await _next_event(ws)
        assert event["type"] == "error"
        assert event["error"]["code"] == "model_not_found"
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008


async def test_api_keys_enforced_when_configured(
    local_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REALTIME_API_KEYS", "sk-good, sk-other")
    async with websockets.connect(_url(local_server)) as ws:
        event = await _next_event(ws)
        assert event["error"]["code"] == "invalid_api_key"
    async with websockets.connect(
        _url(local_server), additional_headers={"Authorization": "Bearer sk-good"}
    ) as ws:
        assert (await _next_event(ws))["type"] == "session.created"
    browser = ["realtime", "openai-insecure-api-key.sk-other"]
    async with websockets.connect(_url(local_server), subprotocols=browser) as ws:  # type: ignore[arg-type]
        assert (await _next_event(ws))["type"] == "session.created"


async def test_full_model_rejects_at_once(
    local_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    slots = local_server.config.model("moshi-base")
    assert slots is not None
    holders = [await websockets.connect(_url(local_server, model="moshi-base")) for _ in range(slots.slots)]
    try:
        for ws in holders:
            assert (await _next_event(ws))["type"] == "session.created"
        caplog.set_level(logging.DEBUG, logger="serve_app.server")
        caplog.clear()
        async with websockets.connect(_url(local_server, model="moshi-base")) as ws:
            event = await _next_event(ws, timeout=2)
            assert event["type"] == "error"
            assert event["error"]["code"] == "server_at_capacity"
            # Logged once, at INFO, with the session, the model and why.
            refusals = [r for r in caplog.records if "refus" in r.getMessage() or "reject" in r.getMessage()]
            assert [r.levelno for r in refusals] == [logging.INFO], [r.getMessage() for r in refusals]
            (refusal,) = refusals
            assert refusal.getMessage().startswith("session rejected: server_at_capacity (moshi-base: ")
            assert refusal.model == "moshi-base" and refusal.session_id.startswith("sess_")
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1013
    finally:
        for ws in holders:
            await ws.close()
    # Slots come back when their sessions end (the server ends them after the sockets closed: wait for it).
    async with asyncio.timeout(5):
        while local_server.gateway.status()["moshi-base"]["local"]["slots_used"]:
            await asyncio.sleep(0.02)
    async with websockets.connect(_url(local_server, model="moshi-base")) as ws:
        assert (await _next_event(ws))["type"] == "session.created"
