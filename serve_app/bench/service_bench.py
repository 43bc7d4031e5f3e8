"""Service benchmark: what the WebSocket + Ray path adds over the engine-only loop, and how many paced
real-time sessions one CPU model replica holds.

Run: `python -m serve_app.bench.service_bench [--out bench_out]`. Writes service_bench.json and
service_bench.png. A program that prints numbers, not a test. Both sides use the same tiny checkpoint, the
same BatchedEngine + ClockedRunner (80 ms clock) and the same paced clients:

- Latency probes. A session sends 80 ms frames on an 80 ms grid; every 10th is a probe, preceded and
  followed by 3 skipped frames and sent at a random point of its 80 ms, so it is the only frame in flight
  and meets the engine's clock at a random phase: its latency is the time from sending it to the first
  output that arrives after it. Engine-only: push into the slot → frame callback
  on the loop. Service: `input_audio_buffer.append` on a WebSocket → front (HAProxy, or Serve's proxy with
  `--front proxy`) → ingress → frame channel → model replica → tick → frame channel → ingress →
  `response.output_audio.delta`. The service only sends
  audio inside a response, so probes that fall between Moshi's utterances get no output (counted as
  `unanswered`). The 80 ms clock adds 0–80 ms (uniform) of waiting to both sides alike, so compare means
  and percentiles over many probes.
- Capacity ramp. N sessions stream without gaps for a few seconds; the frame deficit is frames sent minus
  frames the engine produced for them 0.5 s after the last send (service: counted at the ingress), less
  the one frame every session's start swallows. The largest N with zero deficit is the real-time capacity.
- Order. Ray and the service start first; then each load N runs engine-only and at once through the
  service, so both sides of a ratio see the same minutes of the machine and the same idle Ray processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shlex
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serve_app.bench.cpu_meter import EngineThread, per_frame_ms, snapshot
from serve_app.bench.engine_bench import Timing, git_commit, machine_info
from serve_app.constants import FRAME_S, FRAME_SAMPLES
from serve_app.engine.asyncio_slot import AsyncSlot
from serve_app.engine.batch import BatchedEngine
from serve_app.engine.loader import load_model
from serve_app.engine.runner import ClockedRunner
from serve_app.engine.spec import ModelSpec, SamplingParams
from serve_app.heap import freeze_heap
from serve_app.net import free_port
from serve_app.protocol.codecs import encode_base64, float_to_pcm16, pcm16_to_bytes

logger = logging.getLogger("service_bench")

PROBE_CYCLE = 10
GAP = 3
PROBE_AT = PROBE_CYCLE - GAP - 1
"""Frame positions in a cycle: PROBE_AT-GAP .. PROBE_AT-1 skipped, PROBE_AT probe, then GAP skipped."""
SETTLE_S = 0.5
STARTUP_FRAMES = 1
"""A session's first frame produces no output: the engine drops Mimi's first encoded frame (left padding)."""
MODEL_ID = "moshi-sft"


@dataclass
class SessionRun:
    sent: int = 0
    probe_sent_at: list[float] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    session_id: str = ""

    def probe_latencies(self) -> tuple[list[float], int]:
        """(latency of each answered probe, number unanswered within the gap after it)."""
        answered: list[float] = []
        arrivals = np.asarray(self.arrivals)
        for sent in self.probe_sent_at:
            later = arrivals[(arrivals > sent) & (arrivals <= sent + GAP * FRAME_S)]
            if later.size:
                answered.append(float(later.min()) - sent)
        return answered, len(self.probe_sent_at) - len(answered)


def skipped(position: int) -> bool:
    return PROBE_AT - GAP <= position < PROBE_AT or position > PROBE_AT


async def paced(
    send: Callable[[np.ndarray], Awaitable[None]],
    run: SessionRun,
    seconds: float,
    probes: bool,
    phase: int,
    offset_s: float,
) -> None:
    """Send frames on an absolute 80 ms schedule (no drift); with probes, gap → probe → gap each cycle."""
    rng = np.random.default_rng(phase)
    start = time.monotonic() + offset_s
    frames = int(seconds / FRAME_S)
    for k in range(frames):
        position = (k + phase) % PROBE_CYCLE
        delay = start + k * FRAME_S - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if probes and skipped(position):
            continue
        pcm = (0.1 * rng.standard_normal(FRAME_SAMPLES)).astype(np.float32)
        if probes and position == PROBE_AT:
            # Sender and engine both run 80 ms clocks: without a random offset every probe of a session
            # would meet the tick at the same phase, and the 0–80 ms wait for the tick would be a constant
            # that differs from run to run instead of noise that averages out.
            await asyncio.sleep(float(rng.uniform(0, FRAME_S)))
            run.probe_sent_at.append(time.monotonic())
        await send(pcm)
        run.sent += 1


# --- engine only ---------------------------------------------------------------------------------------


async def engine_sessions(runner: ClockedRunner, n: int, seconds: float, probes: bool) -> list[SessionRun]:
    async def one(index: int) -> SessionRun:
        run = SessionRun()
        stream = AsyncSlot.open(runner)

        async def consume() -> None:
            async for _ in stream.frames():
                run.arrivals.append(time.monotonic())

        reader = asyncio.create_task(consume())
        try:
            await paced(
                stream.send_audio, run, seconds, probes, phase=index * 7, offset_s=random.random() * FRAME_S
            )
            await asyncio.sleep(SETTLE_S)
        finally:
            await stream.close()
            await reader
        return run

    return list(await asyncio.gather(*(one(i) for i in range(n))))


# --- service (Ray Serve + WebSocket) -------------------------------------------------------------------


def service_config(port: int, slots: int) -> dict[str, Any]:
    return {
        "http_options": {"host": "127.0.0.1", "port": port},
        "logging_config": {"encoding": "JSON", "enable_access_log": False, "log_level": "WARNING"},
        "applications": [
            {
                "name": "bench",
                "route_prefix": "/",
                "import_path": "deployments.app:build_app",
                "args": {
                    "models": [
                        {
                            "id": MODEL_ID,
                            "spec": {"tiny_seed": 1},
                            "slots": slots,
                            # The path's cost is measured, not admission: let every session in.
                            "realtime": {"admit_fraction": None, "max_lag_ms": None},
                        }
                    ],
                    "server": {"max_loop_lag_ms": None},
                },
                "deployments": [
                    {"name": "RealtimeIngress", "ray_actor_options": {"num_cpus": 0.25}},
                    {
                        "name": MODEL_ID,
                        "num_replicas": 1,
                        "ray_actor_options": {"num_cpus": 1, "num_gpus": 0},
                    },
                ],
            }
        ],
    }


SESSION_UPDATE = {
    "type": "session.update",
    "session": {
        "type": "realtime",
        "output_modalities": ["audio"],
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None}},
    },
}


async def service_sessions(url: str, n: int, seconds: float, probes: bool) -> list[SessionRun]:
    import websockets

    async def one(index: int) -> SessionRun:
        run = SessionRun()
        async with websockets.connect(url, max_size=None) as ws:
            created = json.loads(await ws.recv())
            assert created["type"] == "session.created", created
            run.session_id = created["session"]["id"]
            await ws.send(json.dumps(SESSION_UPDATE))

            async def consume() -> None:
                async for message in ws:
                    event = json.loads(message)
                    if event["type"] == "response.output_audio.delta":
                        run.arrivals.append(time.monotonic())
                    elif event["type"] == "error":
                        logger.warning("server error: %s", event["error"])

            async def send(pcm: np.ndarray) -> None:
                audio = encode_base64(pcm16_to_bytes(float_to_pcm16(pcm)))
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))

            reader = asyncio.create_task(consume())
            try:
                await paced(send, run, seconds, probes, phase=index * 7, offset_s=random.random() * FRAME_S)
                await asyncio.sleep(SETTLE_S)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        return run

    return list(await asyncio.gather(*(one(i) for i in range(n))))


# --- measurement -----------------------------------------------------------------------------------------


def latency_row(n: int, runs: Sequence[SessionRun]) -> dict[str, Any]:
    answered: list[float] = []
    unanswered = 0
    for run in runs:
        got, missed = run.probe_latencies()
        answered += got
        unanswered += missed
    return {
        "sessions": n,
        "probe": asdict(Timing.of(answered)) if answered else None,
        "mean_ms": round(1000 * float(np.mean(answered)), 2) if answered else None,
        "unanswered_probes": unanswered,
    }


def deficit_row(n: int, sent: Sequence[int], produced: Sequence[int]) -> dict[str, Any]:
    deficits = [max(0, s - STARTUP_FRAMES - p) for s, p in zip(sent, produced, strict=True)]
    return {
        "sessions": n,
        "frames_sent": sum(sent),
        "deficit_total": sum(deficits),
        "deficit_max": max(deficits),
    }


SessionsFn = Callable[[int, float, bool], Awaitable[list[SessionRun]]]


@dataclass
class Side:
    """One way of serving the same paced sessions (engine-only or the whole service) and what it measured."""

    label: str
    configure: Callable[[int], Awaitable[SessionsFn]]
    """An engine (or a replica) of N slots: a tick costs the same for every slot it holds, so one sized far
    above its load would be measured slower than it need be."""
    produced: Callable[[list[SessionRun]], Awaitable[list[int]]]
    cpu: Callable[[], dict[str, float]] | None = None
    latency: list[dict[str, Any]] = field(default_factory=list)
    ramp: list[dict[str, Any]] = field(default_factory=list)

    def past_capacity(self) -> bool:
        """Two ramp steps past capacity already: the rest only takes longer."""
        return len(self.ramp) >= 2 and all(r["deficit_total"] > 0 for r in self.ramp[-2:])

    async def measure(self, n: int, args: argparse.Namespace) -> None:
        ramping = n in args.ramp and not self.past_capacity()
        if n not in args.sessions and not ramping:
            return
        sessions = await self.configure(n)
        if n in args.sessions:
            self.latency.append(latency_row(n, await sessions(n, args.seconds, True)))
            logger.info("%s latency %s", self.label, self.latency[-1])
        if ramping:
            before = self.cpu() if self.cpu else {}
            runs = await sessions(n, args.ramp_seconds, False)
            after = self.cpu() if self.cpu else {}
            frames = await self.produced(runs)
            self.ramp.append(deficit_row(n, [r.sent for r in runs], frames))
            if self.cpu:
                self.ramp[-1]["cpu_ms_per_frame"] = per_frame_ms(before, after, sum(frames))
            logger.info("%s ramp %s", self.label, self.ramp[-1])

    def result(self) -> dict[str, Any]:
        capacity = 0
        for row in self.ramp:
            if row["deficit_total"] > 0:
                break
            capacity = row["sessions"]
        return {"latency": self.latency, "ramp": self.ramp, "realtime_sessions": capacity}


async def measure(sides: Sequence[Side], args: argparse.Namespace) -> None:
    """Each load on every side back to back, so that both sides of a comparison see the same minutes of a
    machine whose speed drifts (a shared VM's engine-only capacity moved from 20 to 12 between two runs)."""
    for n in sorted({*args.sessions, *args.ramp}):
        for side in sides:
            await side.measure(n, args)


@contextlib.asynccontextmanager
async def engine_only_side() -> AsyncIterator[Side]:
    model = load_model(ModelSpec(tiny_seed=1))
    freeze_heap()  # as the model replica does (start_runner)
    current: list[tuple[BatchedEngine, ClockedRunner]] = []

    def release() -> None:
        while current:
            engine, runner = current.pop()
            runner.stop()
            engine.close()

    async def configure(slots: int) -> SessionsFn:
        release()
        engine = BatchedEngine(model, slots=slots, sampling=SamplingParams())
        engine.warmup()
        runner = ClockedRunner(engine, max_lag_s=None)  # measure the path, not the lag limit
        runner.start()
        current.append((engine, runner))

        async def sessions(n: int, seconds: float, probes: bool) -> list[SessionRun]:
            return await engine_sessions(runner, n, seconds, probes)

        return sessions

    async def produced(runs: list[SessionRun]) -> list[int]:
        return [len(r.arrivals) for r in runs]

    try:
        yield Side("engine-only", configure, produced)
    finally:
        release()


@contextlib.asynccontextmanager
async def service_side(args: argparse.Namespace) -> AsyncIterator[Side]:
    import ray
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from serve_app.ray_env import apply_ray_environment
    from serve_app.run import deploy, wait_healthy

    apply_ray_environment(args.front)
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    port = free_port()
    url = f"ws://127.0.0.1:{port}/v1/realtime?model={MODEL_ID}"
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, namespace="serve", log_to_driver=False)
    engine: list[EngineThread] = []

    async def configure(slots: int) -> SessionsFn:
        # A fresh app per size: the model replica's slots are fixed at construction.
        if "bench" in serve.status().applications:
            await asyncio.to_thread(serve.delete, "bench")
        schema = ServeDeploySchema.model_validate(service_config(port, slots))
        started = time.monotonic()
        await asyncio.to_thread(deploy, schema)
        if not await asyncio.to_thread(wait_healthy, schema, 300):
            raise RuntimeError("the service did not become healthy")
        logger.info("service with %d slots healthy after %.1f s", slots, time.monotonic() - started)
        replica = serve.get_deployment_handle(MODEL_ID, "bench")
        pid, tid = await replica.engine_thread.remote()
        engine[:] = [EngineThread(pid, tid)] if tid is not None else []

        async def sessions(n: int, seconds: float, probes: bool) -> list[SessionRun]:
            return await service_sessions(url, n, seconds, probes)

        return sessions

    async def produced(runs: list[SessionRun]) -> list[int]:
        ingress = serve.get_deployment_handle("RealtimeIngress", "bench")
        served: dict[str, dict[str, int]] = await ingress.session_replicas.remote()
        return [sum(served.get(r.session_id, {}).values()) for r in runs]

    def cpu() -> dict[str, float]:
        return snapshot("RealtimeIngress", MODEL_ID, engine[0] if engine else None)

    try:
        yield Side("service", configure, produced, cpu)
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


async def run_both(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(engine-only, service). Ray starts first, so the engine-only side runs beside the same idle Ray
    processes that the service's measurement has."""
    async with service_side(args) as service, engine_only_side() as engine_only:
        await measure([engine_only, service], args)
        return engine_only.result(), service.result()


def added(engine: dict[str, Any], service: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for e, s in zip(engine["latency"], service["latency"], strict=True):
        if e["probe"] and s["probe"]:
            rows.append(
                {
                    "sessions": e["sessions"],
                    "mean_added_ms": round(s["mean_ms"] - e["mean_ms"], 2),
                    "p50_added_ms": round(s["probe"]["p50_ms"] - e["probe"]["p50_ms"], 2),
                    "p99_added_ms": round(s["probe"]["p99_ms"] - e["probe"]["p99_ms"], 2),
                }
            )
    return rows


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, ramp) = plt.subplots(1, 2, figsize=(11, 4.5))
    for side, style in (("engine_only", "o-"), ("service", "s--")):
        rows = [r for r in result[side]["latency"] if r["probe"]]
        ns = [r["sessions"] for r in rows]
        lat.plot(ns, [r["probe"]["p50_ms"] for r in rows], style, label=f"{side} p50")
        lat.plot(ns, [r["probe"]["p99_ms"] for r in rows], style, alpha=0.5, label=f"{side} p99")
        rows = result[side]["ramp"]
        ramp.plot([r["sessions"] for r in rows], [r["deficit_total"] for r in rows], style, label=side)
    lat.set_xscale("log", base=2)
    lat.set_xlabel("concurrent paced sessions")
    lat.set_ylabel("probe latency, ms (input frame → its output)")
    lat.grid(True, alpha=0.3)
    lat.legend(fontsize=8)
    ramp.set_xlabel("concurrent sessions on one replica")
    ramp.set_ylabel(f"frames not produced {SETTLE_S} s after the last send")
    ramp.set_title(
        f"real-time sessions: engine-only {result['engine_only']['realtime_sessions']}, "
        f"service {result['service']['realtime_sessions']}",
        fontsize=9,
    )
    ramp.grid(True, alpha=0.3)
    ramp.legend(fontsize=8)
    machine = result["machine"]
    fig.suptitle(f"tiny checkpoint, {machine['nproc']}-core CPU ({machine['cpu_model']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serve_app.bench.service_bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_out"), help="output directory")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 16], help="latency runs")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each latency run")
    parser.add_argument("--ramp", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16, 20, 24, 28, 32])
    parser.add_argument("--ramp-seconds", type=float, default=8.0, help="length of each ramp step")
    parser.add_argument(
        "--front", choices=("haproxy", "proxy"), default="haproxy", help="HTTP front (serve_app.run --front)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="engine-only torch threads (a replica of num_cpus <= 1 gets 1)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(arguments)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)  # before machine_info records it
    result: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "serve_app.bench.service_bench", *arguments]),
        "commit": git_commit(),
        "machine": machine_info(torch.device("cpu")),
        "slots": "= sessions (one engine sized to each load)",
        "probe": {"cycle_frames": PROBE_CYCLE, "gap_frames": GAP},
    }
    result["engine_only"], result["service"] = asyncio.run(run_both(args))
    result["added_latency"] = added(result["engine_only"], result["service"])
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "service_bench.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "service_bench.png")
    print(json.dumps({k: result[k] for k in ("added_latency", "commit")}, indent=2))
    print(
        f"real-time sessions on one CPU replica: service {result['service']['realtime_sessions']}, "
        f"engine-only {result['engine_only']['realtime_sessions']}"
    )
    print(f"wrote {args.out / 'service_bench.json'} and {args.out / 'service_bench.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
