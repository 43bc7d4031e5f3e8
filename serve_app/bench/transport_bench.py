"""Transport benchmark: what moving one tick's frames between an ingress and a model replica costs.

Run: `python -m serve_app.bench.transport_bench [--out bench_out]`. A program that prints numbers.

The far side is a Ray actor (its own process, like a model replica) that answers every tick's input
with one output frame per session (no model: only the transport is timed). Each tick the near side
sends N sessions' 80 ms of float32 audio and waits for their N frames. Alternatives:

- `channel`: this project's frame channel (serve_app/transport/wire.py) over a Unix socket: one
  AUDIO message out and one FRAMES message back per tick, whatever N is.
- `actor_per_tick`: one plain Ray actor call per tick carrying all N sessions as numpy arrays.
- `actor_per_frame`: one Ray actor call per session-frame (the per-session shape of the old design,
  which paid several such hops: inbox put, inbox take, a streaming-call item).
- `compiled_graph`: a Ray compiled graph (`experimental_compile`, shared-memory channels on one node)
  around the same actor method, executed once per tick.

Reported per alternative and N: round-trip latency (p50/p99) and CPU per session-frame summed over both
processes (psutil), plus Ray's own processes apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import psutil

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.port import EngineFrame
from serve_app.transport import wire
from serve_app.transport.stream import read_message

ALTERNATIVES = ("channel", "actor_per_tick", "actor_per_frame", "compiled_graph")


class FarSide:
    """The replica stand-in: echoes input frames back as output frames (one per session)."""

    def __init__(self) -> None:
        self._path = ""

    def pid(self) -> int:
        return os.getpid()

    def tick(self, leases: np.ndarray, pcm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return leases, pcm * 0.5

    def frame(self, lease: int, pcm: np.ndarray) -> tuple[int, np.ndarray]:
        return lease, pcm * 0.5

    def graph_tick(self, batch: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return self.tick(*batch)

    async def serve_channel(self) -> str:
        """Start a Unix-socket echo of the frame channel's wire format; returns its path."""

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while (message := await read_message(reader)) is not None:
                assert isinstance(message, wire.Audio)
                frames = [EngineFrame(pcm=c * 0.5, text=None, speaking=False) for c in message.chunks]
                writer.write(wire.encode_frames(0.0, message.leases, frames))

        self._path = str(Path(tempfile.mkdtemp(prefix="transport-bench-")) / "s")
        await asyncio.start_unix_server(handle, path=self._path)
        return self._path


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def ray_system_pids() -> list[int]:
    names = ("raylet", "gcs_server", "log_monitor", "dashboard")
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(n in " ".join(p.info["cmdline"] or []) for n in names)
    ]


async def time_ticks(
    tick: Callable[[np.ndarray, np.ndarray], Awaitable[None]], n: int, ticks: int, pids: Sequence[int]
) -> dict[str, Any]:
    rng = np.random.default_rng(n)
    leases = np.arange(1, n + 1, dtype=np.uint32)
    pcm = (0.1 * rng.standard_normal((n, FRAME_SAMPLES))).astype(np.float32)
    for _ in range(10):
        await tick(leases, pcm)
    system = ray_system_pids()
    cpu0, sys0 = cpu_seconds(pids), cpu_seconds(system)
    durations = []
    for _ in range(ticks):
        started = time.perf_counter()
        await tick(leases, pcm)
        durations.append(time.perf_counter() - started)
    frames = n * ticks
    p50, p99 = np.percentile(durations, [50, 99])
    return {
        "sessions": n,
        "round_trip_p50_ms": round(1000 * float(p50), 3),
        "round_trip_p99_ms": round(1000 * float(p99), 3),
        "cpu_ms_per_frame": round(1000 * (cpu_seconds(pids) - cpu0) / frames, 4),
        "ray_system_cpu_ms_per_frame": round(1000 * (cpu_seconds(system) - sys0) / frames, 4),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    far: Any = ray.remote(FarSide).options(max_concurrency=1).remote()
    pids = [os.getpid(), await far.pid.remote()]
    results: dict[str, list[dict[str, Any]]] = {}

    path = await far.serve_channel.remote()
    reader, writer = await asyncio.open_unix_connection(path)

    async def channel(leases: np.ndarray, pcm: np.ndarray) -> None:
        writer.write(wire.encode_audio([int(x) for x in leases], list(pcm)))
        message = await read_message(reader)
        assert isinstance(message, wire.Frames) and len(message.frames) == len(leases)

    async def actor_per_tick(leases: np.ndarray, pcm: np.ndarray) -> None:
        await far.tick.remote(leases, pcm)

    async def actor_per_frame(leases: np.ndarray, pcm: np.ndarray) -> None:
        await asyncio.gather(*(far.frame.remote(int(lease), pcm[i]) for i, lease in enumerate(leases)))

    alternatives: dict[str, Callable[[np.ndarray, np.ndarray], Awaitable[None]]] = {
        "channel": channel,
        "actor_per_tick": actor_per_tick,
        "actor_per_frame": actor_per_frame,
    }
    for name, tick in alternatives.items():
        results[name] = [await time_ticks(tick, n, args.ticks, pids) for n in args.sessions]
        print(name, json.dumps(results[name]), flush=True)
    writer.close()

    try:
        from ray.dag import InputNode

        with InputNode() as batch:
            dag = far.graph_tick.bind(batch)
        compiled = dag.experimental_compile()

        async def compiled_graph(leases: np.ndarray, pcm: np.ndarray) -> None:
            await asyncio.to_thread(lambda: ray.get(compiled.execute((leases, pcm))))

        results["compiled_graph"] = [
            await time_ticks(compiled_graph, n, args.ticks, pids) for n in args.sessions
        ]
        print("compiled_graph", json.dumps(results["compiled_graph"]), flush=True)
        compiled.teardown()
    except Exception as exc:  # an experimental API: record why it could not be measured
        results["compiled_graph_error"] = [{"error": f"{type(exc).__name__}: {exc}"}]
        print("compiled_graph failed:", exc, flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    from serve_app.bench.engine_bench import git_commit

    parser = argparse.ArgumentParser(prog="python -m serve_app.bench.transport_bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--ticks", type=int, default=300)
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)
    result = {
        "command": shlex.join(["python", "-m", "serve_app.bench.transport_bench", *arguments]),
        "commit": git_commit(),
        "nproc": os.cpu_count(),
        "results": asyncio.run(run(args)),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transport_bench.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out / 'transport_bench.json'}", flush=True)
    # ray.shutdown() after a compiled graph's teardown segfaulted (Ray 2.60, this VM); the results are
    # written, and leaving lets Ray's own exit hook stop the local cluster.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
