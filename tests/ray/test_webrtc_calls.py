"""WebRTC calls against the Ray app with two ingress replicas behind HAProxy: a call's media ends on the
replica that answered it, and its hangup and sideband requests reach that replica from the other one.

A second small application in the suite's cluster (its own route prefix, two ingress replicas, one tiny
model of one slot), so the suite's app keeps its single ingress; deleted at the end of the module.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import ray
import websockets
from ray import serve

from deployments.call_owners import registry_name
from deployments.ingress import IngressDeployment
from deployments.model import ModelDeployment
from serve_app.config import load_config
from serve_app.webrtc.owners import CALL_ID_RANDOM_HEX, INGRESS_HEADER, owner_of
from tests.ray.conftest import Cluster
from tests.webrtc.client import RtcClient

APP = "webrtc-calls-test"
PREFIX = "/rtc-calls-test"
MODEL = "moshi-rtc"
API_KEY = "sk-rtc-ray"
INGRESS_REPLICAS = 2


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def some_call_id(owner: str) -> str:
    return f"rtc_{owner}{uuid.uuid4().hex[:CALL_ID_RANDOM_HEX]}"


@pytest.fixture(scope="module")
def rtc_base(cluster: Cluster) -> Iterator[str]:
    config = load_config(
        {
            "models": [
                {"id": MODEL, "spec": {"tiny_seed": 1}, "slots": 1, "realtime": {"admit_fraction": None}}
            ],
            "session": {"utterance_silence_ms": 480},
            "server": {"api_keys": [API_KEY], "max_loop_lag_ms": None, "max_vad_lag_ms": None},
        }
    )
    model = ModelDeployment.options(
        name=MODEL, max_ongoing_requests=1, ray_actor_options={"num_cpus": 0, "num_gpus": 0}
    ).bind(config.models[0].model_dump(mode="json"))
    ingress = IngressDeployment.options(
        num_replicas=INGRESS_REPLICAS, ray_actor_options={"num_cpus": 0}
    ).bind(config.model_dump(mode="json"), {MODEL: model}, None)
    serve.run(ingress, name=APP, route_prefix=PREFIX)  # returns once every replica runs
    try:
        yield f"{cluster.http_base}{PREFIX}"
    finally:
        serve.delete(APP)
        ray.kill(ray.get_actor(registry_name(APP), namespace="serve"))


def http_client(base: str) -> httpx.AsyncClient:
    # No keep-alive: each request is a new connection, which HAProxy may give to either replica.
    return httpx.AsyncClient(base_url=base, timeout=20, limits=httpx.Limits(max_keepalive_connections=0))


async def ingress_owners(http: httpx.AsyncClient) -> set[str]:
    """Both ingress replicas' owner names, once HAProxy routes to both (each answers a hangup for no call
    with its name)."""
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while len(seen) < INGRESS_REPLICAS:
        assert time.monotonic() < deadline, f"HAProxy routed to {seen} only"
        answer = await http.post(f"/v1/realtime/calls/{some_call_id('')}/hangup", headers=auth())
        if answer.status_code == 404:
            seen.add(answer.headers[INGRESS_HEADER])
        else:
            await asyncio.sleep(0.2)  # the route not there yet
    return seen


async def new_call(http: httpx.AsyncClient) -> tuple[RtcClient, str]:
    """A connected call and the owner name of the replica holding it."""
    client = RtcClient.new()
    answer = await client.post(http, key=API_KEY)
    assert answer.status_code == 201, answer.text
    owner = owner_of(client.call_id)
    assert owner and answer.headers[INGRESS_HEADER] == owner
    created = await client.next_event("session.created", timeout=30)
    assert created["session"]["model"] == MODEL
    return client, owner


async def admitted_within(http: httpx.AsyncClient, since: float, limit_s: float) -> RtcClient:
    """A new call, admitted (201) no later than `limit_s` after `since` (503s until then)."""
    while True:
        client = RtcClient.new()
        answer = await client.post(http, key=API_KEY)
        if answer.status_code == 201:
            return client
        await client.close()
        assert answer.status_code == 503, answer.text
        assert time.monotonic() - since < limit_s, "the slot was not freed in time"


async def test_a_sideband_landing_on_the_other_replica_joins_the_call(rtc_base: str) -> None:
    http = http_client(rtc_base)
    owners = await ingress_owners(http)
    client, owner = await new_call(http)
    assert owner in owners
    url = f"{rtc_base.replace('http', 'ws', 1)}/v1/realtime?call_id={client.call_id}"
    try:
        landed: list[str] = []
        for _ in range(20):  # fresh connections until HAProxy hands one to the replica without the call
            side = await websockets.connect(url, additional_headers=auth())
            assert side.response is not None
            landed.append(side.response.headers[INGRESS_HEADER])
            if landed[-1] != owner:
                break
            await side.close()
        assert landed[-1] != owner, f"every sideband landed on the owner: {landed}"
        async with side:
            update = {"type": "session.update", "session": {"type": "realtime", "instructions": "Relayed."}}
            await side.send(json.dumps(update))
            heard: list[dict[str, Any]] = []
            async with asyncio.timeout(30):
                while not [e for e in heard if e["type"] == "session.updated"]:
                    heard.append(json.loads(await side.recv()))
            assert heard[-1]["session"]["instructions"] == "Relayed."
            # The update reached the call: its data channel says so too.
            on_channel = await client.seen("session.updated", timeout=10)
            assert on_channel["session"]["instructions"] == "Relayed."
            assert on_channel["event_id"] == heard[-1]["event_id"]
            # And the call's own events flow to the sideband: Moshi's responses to the track's speech.
            async with asyncio.timeout(40):
                while True:
                    event = json.loads(await side.recv())
                    if event["type"].startswith("response."):
                        break
            assert not [e for e in heard if e["type"] == "error"], heard
            assert event["type"] != "response.output_audio.delta"  # audio stays on the track
            same = await client.seen(event["type"], timeout=10, event_id=event["event_id"])
            assert same == event
        # Closing the relayed sideband does not end the call: a hangup still finds it.
        hangup = await http.post(f"/v1/realtime/calls/{client.call_id}/hangup", headers=auth())
        assert hangup.status_code == 200, hangup.text
    finally:
        await client.close()


async def test_a_hangup_landing_on_the_other_replica_ends_the_call(rtc_base: str) -> None:
    http = http_client(rtc_base)
    await ingress_owners(http)
    landings: list[tuple[str, str]] = []
    for _ in range(8):  # calls until one's hangup lands on the replica that does not hold it
        client, owner = await new_call(http)
        try:
            async with asyncio.timeout(10):
                while client.pc.connectionState != "connected":
                    await asyncio.sleep(0.02)
            sent = time.monotonic()
            hangup = await http.post(f"/v1/realtime/calls/{client.call_id}/hangup", headers=auth())
            assert hangup.status_code == 200, hangup.text
            landings.append((owner, hangup.headers[INGRESS_HEADER]))
            # The slot is free within 1 s: the model has one, and a new call is admitted (whichever replica
            # answers it).
            follow_up = await admitted_within(http, sent, 1.0)
            try:
                assert (
                    await http.post(f"/v1/realtime/calls/{follow_up.call_id}/hangup", headers=auth())
                ).status_code == 200
            finally:
                await follow_up.close()
            # The server closed the call's peer connection: the client's data channel closes.
            async with asyncio.timeout(10):
                while client.channel.readyState != "closed":
                    await asyncio.sleep(0.05)
        finally:
            await client.close()
        if landings[-1][0] != landings[-1][1]:
            break
    owner, landed = landings[-1]
    assert owner != landed, f"every hangup landed on its call's owner: {landings}"


async def test_requests_for_a_call_whose_owner_is_gone_are_not_found(rtc_base: str) -> None:
    http = http_client(rtc_base)
    owners = await ingress_owners(http)
    # No replica of that name (gone, or never: a client cannot name an address, only an owner).
    for owner in ("gone0000", "127001", *owners):
        for _ in range(2):  # either replica may take it
            answer = await http.post(f"/v1/realtime/calls/{some_call_id(owner)}/hangup", headers=auth())
            assert answer.status_code == 404, answer.text
            assert answer.json()["error"]["code"] == "call_not_found"
    url = f"{rtc_base.replace('http', 'ws', 1)}/v1/realtime?call_id={some_call_id('gone0000')}"
    async with websockets.connect(url, additional_headers=auth()) as side:
        error = json.loads(await side.recv())
        assert error["type"] == "error" and error["error"]["code"] == "call_not_found"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await side.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    # Without a key nothing is forwarded or looked up.
    refused = await http.post(f"/v1/realtime/calls/{some_call_id(next(iter(owners)))}/hangup")
    assert refused.status_code == 401
