"""WebRTC calls end to end: aiortc client ↔ the in-process server (real uvicorn, real engine)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import numpy as np
import pytest
import websockets

from serve_app.server.client_secrets import key_id, mint
from tests.server.conftest import RunningServer
from tests.webrtc.client import RtcClient
from tests.webrtc.conftest import API_KEY, CONNECT_TIMEOUT_S


def slots_used(server: RunningServer) -> int:
    status: Any = server.gateway.status()
    return int(status["moshi-sft"]["local"]["slots_used"])


async def wait_free(server: RunningServer, within_s: float) -> float:
    started = time.monotonic()
    while slots_used(server):
        assert time.monotonic() - started < within_s, f"slot still held after {within_s} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
def http(rtc_server: RunningServer) -> httpx.AsyncClient:
    # Not entered: each request opens its own connection, so nothing outlives the test's event loop.
    return httpx.AsyncClient(
        base_url=rtc_server.http_base, timeout=20, limits=httpx.Limits(max_keepalive_connections=0)
    )


async def converse(client: RtcClient, server: RunningServer, http: httpx.AsyncClient) -> None:
    """session.created → Moshi's audio on the track and its transcript on the channel → hangup."""
    created = await client.seen("session.created")
    assert created["session"]["model"] == "moshi-sft"
    assert slots_used(server) == 1
    await client.seen("response.output_audio_transcript.delta", timeout=30)
    # (Not necessarily the same response's: server VAD's barge-in may cancel one before it plays.)
    await client.seen("output_audio_buffer.started", timeout=30)
    await asyncio.sleep(0.5)  # let some of it play
    heard = np.concatenate(client.audio)
    assert np.abs(heard).max() > 100, "Moshi's audio did not reach the remote track"
    # A response's audio `stopped` once it has played out, after its response.done.
    stopped = await client.seen("output_audio_buffer.stopped", timeout=40)
    types = [(e["type"], e.get("response_id") or e.get("response", {}).get("id")) for e in client.log]
    rid = stopped["response_id"]
    started_at = types.index(("output_audio_buffer.started", rid))
    assert (
        started_at < types.index(("response.done", rid)) < types.index(("output_audio_buffer.stopped", rid))
    )
    # Audio travels on the track only.
    assert not [e for e in client.log if e["type"] == "response.output_audio.delta"]

    closed = asyncio.Event()
    client.pc.on(
        "connectionstatechange", lambda: closed.set() if client.pc.connectionState == "closed" else None
    )
    hangup = await http.post(f"/v1/realtime/calls/{client.call_id}/hangup", headers=auth())
    assert hangup.status_code == 200
    assert await wait_free(server, 1.0) < 1.0
    # The server closed its side: the client's data channel closes (its peer connection goes with it).
    async with asyncio.timeout(10):
        while client.channel.readyState != "closed":
            await asyncio.sleep(0.05)


def auth(key: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_raw_sdp_call_with_a_client_secret(rtc_server: RunningServer, http: httpx.AsyncClient) -> None:
    minted = await http.post(
        "/v1/realtime/client_secrets",
        json={"expires_after": {"anchor": "created_at", "seconds": 60}, "session": {"type": "realtime"}},
        headers=auth(),
    )
    assert minted.status_code == 200, minted.text
    secret = minted.json()["value"]
    assert secret.startswith("ek_")
    client = RtcClient.new()
    try:
        response = await client.post(http, key=secret)
        assert response.status_code == 201, response.text
        assert response.headers["content-type"].startswith("application/sdp")
        assert response.headers["location"] == f"/v1/realtime/calls/{client.call_id}"
        assert client.call_id.startswith("rtc_")
        assert "a=candidate" in response.text  # ICE gathered before the answer
        await converse(client, rtc_server, http)
    finally:
        await client.close()


async def test_multipart_call_with_an_api_key_and_a_sideband(
    rtc_server: RunningServer, http: httpx.AsyncClient
) -> None:
    client = RtcClient.new()
    try:
        session = {"type": "realtime", "model": "moshi-sft", "instructions": "Be brief."}
        response = await client.post(http, key=API_KEY, shape="multipart", session=session)
        assert response.status_code == 201, response.text
        created = await client.next_event("session.created")
        assert created["session"]["instructions"] == "Be brief."

        url = f"{rtc_server.ws_base}/realtime?call_id={client.call_id}"
        async with websockets.connect(url, additional_headers=auth()) as side:
            # The sideband may update the session: the call's channel sees the result too.
            await side.send(
                json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": "Hi."}})
            )
            async with asyncio.timeout(10):
                while (event := json.loads(await side.recv()))["type"] != "session.updated":
                    assert event["type"] != "response.output_audio.delta"
            assert event["session"]["instructions"] == "Hi."
            updated = await client.next_event("session.updated")
            assert updated["session"]["instructions"] == "Hi."
        # Closing the sideband does not end the call.
        await asyncio.sleep(0.3)
        assert slots_used(rtc_server) == 1
        await converse(client, rtc_server, http)
    finally:
        await client.close()


async def test_output_audio_buffer_clear_flushes_and_is_acknowledged_once(
    rtc_server: RunningServer, http: httpx.AsyncClient
) -> None:
    client = RtcClient.new()
    try:
        # JSON body (older openai-python); no server VAD, so no barge-in clears anything meanwhile.
        session = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        assert (await client.post(http, key=API_KEY, shape="json", session=session)).status_code == 201
        created = await client.next_event("session.created")
        assert created["session"]["audio"]["input"]["turn_detection"] is None
        started = await client.next_event("output_audio_buffer.started", timeout=30)
        client.send({"type": "output_audio_buffer.clear"})
        cleared = await client.next_event("output_audio_buffer.cleared")
        await asyncio.sleep(1.0)
        assert [e["type"] for e in client.log].count("output_audio_buffer.cleared") == 1
        # Its queued audio was dropped, not played out: that response never `stopped`.
        stopped = [e for e in client.log if e["type"] == "output_audio_buffer.stopped"]
        assert started["response_id"] not in [e["response_id"] for e in stopped]
        assert cleared["response_id"] == started["response_id"]
        hangup = await http.post(f"/v1/realtime/calls/{client.call_id}/hangup", headers=auth())
        assert hangup.status_code == 200
        await wait_free(rtc_server, 1.0)
    finally:
        await client.close()


async def test_errors(rtc_server: RunningServer, http: httpx.AsyncClient) -> None:
    client = RtcClient.new()
    try:
        sdp = await client.offer()
        wrong_type = await http.post(
            "/v1/realtime/calls", content=sdp, headers={**auth(), "Content-Type": "text/plain"}
        )
        assert wrong_type.status_code == 415
        assert wrong_type.json()["error"]["code"] == "unsupported_media_type"
        garbage = await http.post(
            "/v1/realtime/calls", content="hello", headers={**auth(), "Content-Type": "application/sdp"}
        )
        assert garbage.status_code == 400
        assert garbage.json()["error"]["param"] == "sdp"
        settings = rtc_server.config.server
        expired = mint(
            session={"type": "realtime"},
            model="moshi-sft",
            minted_by=key_id(API_KEY, settings),
            expires_at=int(time.time()) - 1,
            settings=settings,
        )
        for key in ("sk-wrong", "ek_forged.c2lnbmF0dXJl", expired):
            refused = await http.post(
                "/v1/realtime/calls", content=sdp, headers={**auth(key), "Content-Type": "application/sdp"}
            )
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["code"] == "invalid_api_key"
            assert ("expired" in refused.json()["error"]["message"]) == (key == expired)
        unknown = await http.post("/v1/realtime/calls/rtc_nosuchcall/hangup", headers=auth())
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "call_not_found"
        assert (await http.post("/v1/realtime/calls/rtc_nosuchcall/hangup")).status_code == 401
        assert slots_used(rtc_server) == 0
    finally:
        await client.close()


async def test_a_call_whose_ice_never_connects_is_ended(
    rtc_server: RunningServer, http: httpx.AsyncClient
) -> None:
    client = RtcClient.new()
    sdp = await client.offer()
    await client.close()  # the offer's candidates go nowhere: ICE cannot connect
    response = await http.post(
        "/v1/realtime/calls", content=sdp, headers={**auth(), "Content-Type": "application/sdp"}
    )
    assert response.status_code == 201
    call_id = response.headers["location"].rsplit("/", 1)[-1]
    assert slots_used(rtc_server) == 1
    await wait_free(rtc_server, CONNECT_TIMEOUT_S + 2)
    gone = await http.post(f"/v1/realtime/calls/{call_id}/hangup", headers=auth())
    assert gone.status_code == 404


async def test_a_full_model_refuses_a_call(rtc_server: RunningServer, http: httpx.AsyncClient) -> None:
    clients = [RtcClient.new() for _ in range(3)]
    try:
        for client in clients[:2]:
            assert (await client.post(http, key=API_KEY)).status_code == 201
        refused = await clients[2].post(http, key=API_KEY)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "server_at_capacity"
        for client in clients[:2]:
            assert (
                await http.post(f"/v1/realtime/calls/{client.call_id}/hangup", headers=auth())
            ).status_code == 200
        await wait_free(rtc_server, 1.0)
    finally:
        for client in clients:
            await client.close()
