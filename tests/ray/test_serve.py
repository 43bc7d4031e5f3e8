"""The Ray Serve topology end to end: real Ray, real WebSockets, the official openai SDK, tiny checkpoints.

Tests run in file order on one cluster (conftest): the upscale test needs moshi-sft at 1 replica, the
capacity and downscale tests need it at its maximum of 2.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
import websockets
from ray import serve

from serve_app.constants import FRAME_SAMPLES
from serve_app.transport.ingress_channel import ChannelEnded, ReplicaChannel
from serve_app.transport.reasons import EndReason
from tests.fixtures.audio import speech_like, to_pcm16
from tests.fixtures.grafana import panel_queries
from tests.fixtures.prometheus import prometheus
from tests.ray.conftest import APP, SFT_AUTOSCALING, SLOTS, SLOW, Cluster
from tests.ray.sessions import (
    admitted_session,
    frames_of,
    ledger,
    live_session,
    moves,
    sessions_on_each_replica,
    wait_frames,
)


def test_healthz_and_models(cluster: Cluster) -> None:
    assert httpx.get(f"{cluster.http_base}/healthz").status_code == 200
    models = httpx.get(f"{cluster.http_base}/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["moshi-sft", "moshi-base", SLOW]


async def test_status_shows_a_replica_idle_once_its_last_session_ended(cluster: Cluster) -> None:
    async with live_session(cluster, "moshi-base", speak_s=2, seed=70) as session:
        await wait_frames(cluster, [session], {session.session_id: 3}, timeout=30)
        (replica,) = (await ledger(cluster))[session.session_id]
    deadline = time.monotonic() + 10
    while True:  # the server frees the slot after the socket closes
        report = httpx.get(f"{cluster.http_base}/v1/status").json()["models"]["moshi-base"][replica]
        if report["reported_at"] == "session_end" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert report["reported_at"] == "session_end", report
    # No other test holds a moshi-base session now: the replica reads as idle, not as full.
    assert report["slots_used"] == 0 and report["admitting"] is True, report
    assert 0 <= report["age_s"] < 10 and report["sessions_from_this_ingress"] == 0, report


async def test_model_replicas_run_at_the_default_process_priority(cluster: Cluster) -> None:
    """Ray would start them at nice 15, where any ordinary process on the node preempts the engine clock."""
    pid, tid = await serve.get_deployment_handle("moshi-base", APP).engine_thread.remote()
    assert tid is not None
    assert (os.getpriority(os.PRIO_PROCESS, pid), os.getpriority(os.PRIO_PROCESS, tid)) == (0, 0)


async def test_upscale_never_moves_a_live_session(cluster: Cluster) -> None:
    """Sessions beyond the target start a second replica; every session's frames come from one replica."""
    assert cluster.running_replicas("moshi-sft") == 1
    async with contextlib.AsyncExitStack() as stack:
        first = [
            await stack.enter_async_context(live_session(cluster, "moshi-sft", speak_s=60, seed=s))
            for s in (1, 2)
        ]
        await wait_frames(cluster, first, {}, timeout=30)
        # 2 ongoing sessions > target 1 per replica: Serve adds the second (and last) replica.
        await asyncio.to_thread(cluster.wait_running, "moshi-sft", 2, 90)
        before = await ledger(cluster)
        later = [
            await stack.enter_async_context(live_session(cluster, "moshi-sft", speak_s=60, seed=s))
            for s in (3, 4)
        ]
        # The first sessions keep streaming across the upscale, the new ones stream too.
        need = {s.session_id: frames_of(before, s) + 10 for s in first}
        await wait_frames(cluster, first + later, need, timeout=30)
        for session in first + later:
            assert not session.errors(), session.errors()

    served = await ledger(cluster)
    replicas = {}
    for session in first + later:
        by_replica = served[session.session_id]
        assert len(by_replica) == 1, f"{session.session_id} was served by {by_replica}"
        replicas[session.session_id] = next(iter(by_replica))
    assert len(set(replicas.values())) == 2, replicas
    # The two later sessions went to the new replica: the old one was full.
    assert replicas[later[0].session_id] == replicas[later[1].session_id] != replicas[first[0].session_id]


async def test_concurrent_sessions_on_two_model_types_complete_a_response(cluster: Cluster) -> None:
    async def converse(model: str, seed: int) -> None:
        async with live_session(cluster, model, speak_s=30, seed=seed) as session:
            # Server VAD stays on; its barge-in would cancel Moshi each time the talker resumes (a bursty
            # talker can keep every response from completing), which is not what this test is about.
            detection = {"type": "server_vad", "interrupt_response": False}
            await session.conn.session.update(
                session={"type": "realtime", "audio": {"input": {"turn_detection": detection}}}
            )
            done = await session.wait_for(lambda e: e.type == "response.done", timeout=60)
            assert done.response.status == "completed"
            audio = [
                e for e in session.of_type("response.output_audio.delta") if e.response_id == done.response.id
            ]
            assert audio
            assert not session.errors()

    await asyncio.gather(converse("moshi-sft", 11), converse("moshi-sft", 12), converse("moshi-base", 13))


LOUD = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")


def _log_files() -> list[Path]:
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return [*logs.glob("serve/*.log"), *logs.glob("worker-*.err"), *logs.glob("worker-*.out")]


def _loud_lines(since: dict[Path, int]) -> list[str]:
    loud = []
    for path in _log_files():
        with path.open("rb") as f:
            f.seek(since.get(path, 0))
            text = f.read().decode(errors="replace")
        for line in text.splitlines():
            level = ""
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    level = json.loads(line).get("levelname", "")
            if level in ("WARNING", "ERROR", "CRITICAL") or (not level and LOUD.search(line)):
                loud.append(f"{path.name}: {line[:300]}")
    return loud


async def test_normal_closes_log_nothing_above_info(cluster: Cluster) -> None:
    """Every process of a real serve.run (front, ingress, replicas) stays quiet when clients just leave."""
    since = {path: path.stat().st_size for path in _log_files()}
    for seed in (60, 61):  # the official SDK, its context manager closing the socket
        async with live_session(cluster, "moshi-sft", speak_s=5, seed=seed) as session:
            await wait_frames(cluster, [session], {session.session_id: 5}, timeout=30)
    async with websockets.connect(f"{cluster.ws_base}/realtime?model=moshi-base") as ws:  # a raw client
        assert json.loads(await ws.recv())["type"] == "session.created"
        audio = base64.b64encode(to_pcm16(speech_like(0.5, seed=62))).decode()
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        await asyncio.sleep(0.5)
    await asyncio.sleep(3.0)  # the replicas release the leases and flush their logs
    assert not _loud_lines(since)


async def test_a_replica_whose_ticks_leave_no_room_refuses_and_keeps_its_session_in_real_time(
    cluster: Cluster,
) -> None:
    async with live_session(cluster, SLOW, speak_s=30, seed=50) as live:
        await wait_frames(cluster, [live], {live.session_id: 15}, timeout=30)  # > 1 s of busy ticks
        url = f"{cluster.ws_base}/realtime?model={SLOW}"
        started = time.monotonic()
        async with websockets.connect(url) as ws:
            event = json.loads(await asyncio.wait_for(ws.recv(), 10))
            refused_after = time.monotonic() - started
            assert event["type"] == "error" and event["error"]["code"] == "server_at_capacity", event
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1013
        assert refused_after < 3.0
        status = httpx.get(f"{cluster.http_base}/v1/status").json()
        (report,) = status["models"][SLOW].values()
        assert report["admitting"] is False and report["slots_used"] == 1 and report["slots_total"] == 16
        assert report["tick_p90_s"] > 0.4 * 0.08, report

        # The live session keeps real time meanwhile: 12.5 frames a second, no error.
        before = frames_of(await ledger(cluster), live)
        await asyncio.sleep(4.0)
        rate = (frames_of(await ledger(cluster), live) - before) / 4.0
        assert rate >= 11.0, f"{rate:.1f} frames/s"
        assert not live.errors()


async def test_full_at_max_replicas_rejects_at_once(cluster: Cluster) -> None:
    await asyncio.to_thread(cluster.wait_running, "moshi-sft", 2, 60)
    async with contextlib.AsyncExitStack() as stack:
        holders = [
            await stack.enter_async_context(live_session(cluster, "moshi-sft")) for _ in range(2 * SLOTS)
        ]
        assert all(not s.errors() for s in holders)
        url = f"{cluster.ws_base}/realtime?model=moshi-sft"
        started = time.monotonic()
        async with websockets.connect(url) as ws:
            event = await asyncio.wait_for(ws.recv(), 10)
            rejected_after = time.monotonic() - started
            assert '"server_at_capacity"' in str(event), event
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1013
        print(f"rejected after {rejected_after:.2f} s")
        assert rejected_after < 3.0
    # Capacity comes back as soon as the holders leave.
    async with live_session(cluster, "moshi-sft") as session:
        assert not session.errors()


async def test_downscale_moves_live_sessions_to_the_remaining_replica(cluster: Cluster) -> None:
    """The replica chosen for downscale hands its sessions over (rebuilt from their history) and goes at
    once, instead of holding them for graceful_shutdown_timeout_s."""
    await asyncio.to_thread(cluster.wait_running, "moshi-sft", 2, 60)
    async with contextlib.AsyncExitStack() as stack:
        sessions, _ = await sessions_on_each_replica(stack, cluster, "moshi-sft", {0: 1, 1: 1}, 40)

        # 2 sessions at a target of 2 per replica: the autoscaler wants 1 replica and drains the other.
        autoscaling = {**SFT_AUTOSCALING, "target_ongoing_requests": 2, "downscale_delay_s": 0.5}
        await asyncio.to_thread(
            cluster.redeploy, {"autoscaling_config": autoscaling, "graceful_shutdown_timeout_s": 120}
        )
        await asyncio.to_thread(cluster.wait_replicas, "moshi-sft", 1, 60, "STOPPING")
        stopping_at = time.monotonic()
        # The draining replica leaves long before its 120 s grace.
        await asyncio.to_thread(cluster.wait_replicas, "moshi-sft", 0, 30, "STOPPING")
        gone_s = time.monotonic() - stopping_at
        assert cluster.running_replicas("moshi-sft") == 1

        # Every session goes on, on the one replica left; the moved one after a short gap.
        before = await ledger(cluster)
        await wait_frames(cluster, sessions, {s.session_id: frames_of(before, s) + 30 for s in sessions}, 30)
        assert all(not s.errors() and not s.closed.is_set() for s in sessions)
        served, moved = await ledger(cluster), await moves(cluster)
        (survivor,) = {r for s in sessions for r in served[s.session_id]} - {
            m["from"] for s in sessions for m in moved.get(s.session_id, [])
        }
        for session in sessions:
            for move in moved.get(session.session_id, []):
                gap_ms = 1000 * move["gap_s"]
                print(f"moved ({move['reason']}): output gap {gap_ms:.0f} ms; replica gone in {gone_s:.1f} s")
                assert move["reason"] == "drain" and move["to"] == survivor
                assert move["gap_s"] < 2.0
        assert sum(len(moved.get(s.session_id, [])) for s in sessions) == 1
        assert gone_s < 30


async def test_a_killed_replicas_sessions_continue_on_the_survivor_while_it_has_room(
    cluster: Cluster,
) -> None:
    """The victim held two sessions, the survivor one free slot: one session continues there, rebuilt
    from its history; the other gets session_lost, as there is no room left for it."""
    async with contextlib.AsyncExitStack() as stack:
        sessions, replica_of = await sessions_on_each_replica(stack, cluster, "moshi-base", {0: 2, 1: 1}, 20)
        victim = next(r for r in replica_of.values() if list(replica_of.values()).count(r) == 2)
        on_victim = [s for s in sessions if replica_of[s.session_id] == victim]
        kept = [s for s in sessions if replica_of[s.session_id] != victim]

        actor = ray.get_actor(f"SERVE_REPLICA::{APP}#moshi-base#{victim}", namespace="serve")
        killed_at = time.monotonic()
        ray.kill(actor, no_restart=True)

        # One of the two is lost, at once and with an error...
        lost_error = None
        deadline = time.monotonic() + 15
        while lost_error is None and time.monotonic() < deadline:
            for session in on_victim:
                if session.errors():
                    lost_error = (session, session.errors()[0])
            await asyncio.sleep(0.05)
        assert lost_error is not None, "neither session on the killed replica was told"
        lost, error = lost_error
        assert error.error.code == "session_lost"
        await asyncio.wait_for(lost.closed.wait(), 5)
        assert lost.closed_at is not None
        print(f"session_lost after {lost.closed_at - killed_at:.2f} s")
        assert lost.closed_at - killed_at < 5.0

        # ...the other continues on the survivor, after a gap.
        (resumed,) = [s for s in on_victim if s is not lost]
        before = await ledger(cluster)
        await wait_frames(
            cluster, [resumed, *kept], {s.session_id: frames_of(before, s) + 20 for s in [resumed, *kept]}, 30
        )
        assert not resumed.errors() and not resumed.closed.is_set()
        assert all(not s.errors() and not s.closed.is_set() for s in kept)
        (move,) = (await moves(cluster))[resumed.session_id]
        print(f"resumed after the kill: output gap {1000 * move['gap_s']:.0f} ms")
        assert move["reason"] == "lost" and move["from"] == victim
        assert move["to"] == replica_of[kept[0].session_id]
        assert move["gap_s"] < 3.0

        # And a new session is admitted once there is room (Serve's replacement replica); until then the
        # survivor's slots are full and it says so (server_at_capacity): try again, as told.
        fresh = await admitted_session(stack, cluster, "moshi-base", speak_s=30, seed=30, within_s=90)
        await wait_frames(cluster, [fresh], {}, timeout=30)
        assert not fresh.errors()

    served = await ledger(cluster)
    for session in kept:
        assert list(served[session.session_id]) == [replica_of[session.session_id]]


async def test_model_replica_refuses_input_for_unknown_sessions(cluster: Cluster) -> None:
    """Audio for a session a replica does not hold is refused on its channel, never fed to a slot."""
    handle = serve.get_deployment_handle("moshi-base", APP)
    replica_id, address = await handle.channel.remote()
    channel = await ReplicaChannel.connect(address, replica_id, ray.get_runtime_context().get_node_id())
    try:
        session = channel.attach(424242)
        session.send_audio(np.zeros(FRAME_SAMPLES, np.float32))
        with pytest.raises(ChannelEnded) as ended:
            async for _ in session.frames():
                pass
        assert ended.value.reason is EndReason.UNKNOWN
    finally:
        await channel.close()


def _samples(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name)]


async def test_metrics_are_exported(cluster: Cluster) -> None:
    # An error of its own, so the errors counter does not depend on what earlier tests happened to send.
    async with websockets.connect(f"{cluster.ws_base}/realtime?model=moshi-base") as ws:
        await ws.send("not json")
        while (event := json.loads(await ws.recv()))["type"] != "error":
            pass
        assert event["error"]["code"] == "invalid_json"
    expected = {
        "ray_moshi_realtime_active_sessions": None,
        "ray_moshi_realtime_slots_used": None,
        "ray_moshi_realtime_slots_total": None,
        "ray_moshi_realtime_capacity_sessions": None,
        "ray_moshi_realtime_admitting": None,
        "ray_moshi_realtime_tick_duration_seconds_bucket": None,
        "ray_moshi_realtime_late_ticks_total": None,
        "ray_moshi_realtime_missed_frames_total": None,
        "ray_moshi_realtime_time_to_first_audio_seconds_bucket": None,
        "ray_moshi_realtime_sessions_started_total": None,
        "ray_moshi_realtime_sessions": None,
        "ray_moshi_realtime_replica_sessions_total": None,
        "ray_moshi_realtime_sessions_rejected_total": 'code="server_at_capacity"',
        "ray_moshi_realtime_errors_total": 'code="invalid_json"',
        # Every model replica reports its persona prompt cache (empty on models without a prompt channel).
        "ray_moshi_realtime_prompt_cache_bytes": 'model="moshi-sft"',
        # The delegate path's series exist from zero, for every model (none has a delegate here).
        "ray_moshi_realtime_delegate_calls_total": 'result="delegate_timeout"',
        "ray_moshi_realtime_tool_calls_total": 'model="moshi-base"',
    }
    deadline = time.monotonic() + 30
    missing: list[str] = list(expected)
    async with httpx.AsyncClient(timeout=10) as http:
        while missing and time.monotonic() < deadline:
            text = (await http.get(f"http://127.0.0.1:{cluster.metrics_port}/metrics")).text
            missing = [
                name
                for name, must in expected.items()
                if not any((must or "") in line for line in _samples(text, name))
            ]
            if missing:
                await asyncio.sleep(1)
    assert not missing, f"not exported: {missing}"
    slots_total = [
        ln for ln in _samples(text, "ray_moshi_realtime_slots_total") if 'model="moshi-base"' in ln
    ]
    assert slots_total and all(float(ln.rsplit(" ", 1)[1]) == SLOTS for ln in slots_total)
    assert re.search(r'ray_moshi_realtime_tick_duration_seconds_count\{[^}]*model="moshi-sft"', text)


async def test_grafana_panels_query_real_prometheus(cluster: Cluster) -> None:
    """Each shipped panel's query, run by a real Prometheus scraping this cluster, returns series that carry
    the labels its legend names; the model variable's own query lists every model. Runs after the move
    tests, so the move counters exist too (Ray exports a counter once it has been incremented)."""
    with prometheus([f"127.0.0.1:{cluster.metrics_port}"]) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:

            async def query(expr: str) -> list[dict[str, Any]]:
                body = (await http.get("/api/v1/query", params={"query": expr})).json()
                assert body["status"] == "success", (expr, body)
                result: list[dict[str, Any]] = body["data"]["result"]
                return result

            # rate()/increase() need two scrapes inside their window: poll until every panel has data.
            pending = panel_queries()
            assert pending and not [q for q in pending if "$" in q[1]], "a query uses a variable left unset"
            failures: dict[tuple[str, str, str], str] = {}
            deadline = time.monotonic() + 60
            while pending and time.monotonic() < deadline:
                failures = {}
                for title, expr, legend in pending:
                    series = await query(expr)
                    wanted = set(re.findall(r"\{\{(\w+)\}\}", legend))
                    if not series:
                        failures[title, expr, legend] = f"{title}: no series for {expr}"
                    elif bad := [s["metric"] for s in series if not wanted <= s["metric"].keys()]:
                        failures[title, expr, legend] = f"{title}: {expr} lacks {wanted} in {bad}"
                pending = list(failures)
                if pending:
                    await asyncio.sleep(2)
            assert not failures, "\n".join(failures.values())

            values = (
                await http.get(
                    "/api/v1/label/model/values", params={"match[]": "ray_moshi_realtime_slots_total"}
                )
            ).json()["data"]
            assert {"moshi-sft", "moshi-base", SLOW} <= set(values)


async def test_killed_ingress_drops_its_sockets_frees_their_slots_and_comes_back(cluster: Cluster) -> None:
    """Last in the file: the ingress replica dies under live sessions. Its sockets close at once (no process
    is left to send an error), the model replicas free the slots of the dropped frame channel, and once
    Serve's replacement ingress is routed, every slot admits a new session."""
    cluster.wait_running("moshi-base", 2, timeout_s=120)
    capacity = 2 * SLOTS
    async with contextlib.AsyncExitStack() as stack:
        sessions = [
            await admitted_session(stack, cluster, "moshi-base", speak_s=60, seed=40 + i, within_s=60)
            for i in range(capacity)
        ]
        await wait_frames(cluster, sessions, {}, timeout=30)
        (name,) = [
            actor["name"]
            for actor in ray.util.list_named_actors(all_namespaces=True)  # type: ignore[no-untyped-call]
            if f"{APP}#RealtimeIngress#" in actor["name"]
        ]
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        for session in sessions:
            await asyncio.wait_for(session.closed.wait(), 5)
            assert session.closed_at is not None and session.closed_at - killed_at < 2.0
    async with contextlib.AsyncExitStack() as stack:
        fresh = [
            await admitted_session(
                stack, cluster, "moshi-base", speak_s=20, seed=50 + i, within_s=120, until_reachable=True
            )
            for i in range(capacity)
        ]
        await wait_frames(cluster, fresh, {}, timeout=30)
        assert all(not s.errors() for s in fresh)
