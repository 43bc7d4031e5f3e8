"""One load run: N sessions started evenly over the ramp, all streaming until the steady phase ends; the
steady phase alone is measured (first-audio times count from each session's own start)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from serve_app.loadgen.audio import append_events, default_audio
from serve_app.loadgen.progress import Progress
from serve_app.loadgen.record import SessionRecord
from serve_app.loadgen.server_status import fetch_status
from serve_app.loadgen.session_driver import Target, drive_session, realtime_url
from serve_app.loadgen.stats import Aggregate, SessionStats, Window, aggregate, session_stats

LAG_PROBE_S = 0.05
START_LEAD_S = 0.05


@dataclass(frozen=True)
class LoadConfig:
    url: str = "ws://127.0.0.1:8000/v1/realtime"
    model: str = "moshi-sft"
    sessions: int = 4
    ramp_s: float = 5.0
    duration_s: float = 30.0
    audio: Path | None = None
    """24 kHz mono PCM16 WAV, looped (None: the committed speech fixture)."""
    api_key: str | None = field(default=None, repr=False)
    prebuffer_ms: float = 200.0
    """The simulated client's playback buffer fills this much before it starts playing a response."""
    server_vad: bool = True
    """False: server VAD off by session.update (Moshi answers all the same; the ingress does less)."""
    connect_timeout_s: float = 10.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["api_key"]  # never written to a results file
        out["api_key_set"] = bool(self.api_key)
        out["audio"] = str(self.audio or default_audio())
        out["url"] = realtime_url(self.url, self.model)
        return out

    def target(self) -> Target:
        update = None
        if not self.server_vad:
            # The benchmark's session.update (PCM16 in, audio out, no turn detection); imported here
            # because its module loads the engine.
            from serve_app.bench.service_bench import SESSION_UPDATE

            update = json.dumps(SESSION_UPDATE)
        return Target(realtime_url(self.url, self.model), self.api_key, self.connect_timeout_s, update)


@dataclass
class LoadRun:
    config: LoadConfig
    records: list[SessionRecord]
    window: Window
    """The steady phase, in seconds since the run began."""
    stats: list[SessionStats]
    aggregate: Aggregate
    started_at: str
    """Wall-clock start (UTC, ISO 8601)."""
    server_status: dict[str, Any] | None
    """`/v1/status` fetched halfway through the steady phase (None: not available)."""
    client_loop_lag_max_ms: float
    """How late this process's event loop woke at worst: large values mean the client, not the server,
    was the bottleneck."""


async def _watch_lag(worst: list[float]) -> None:
    while True:
        due = time.monotonic() + LAG_PROBE_S
        await asyncio.sleep(LAG_PROBE_S)
        worst[0] = max(worst[0], time.monotonic() - due)


async def _status_at(when: float, config: LoadConfig, holder: list[dict[str, Any] | None]) -> None:
    await asyncio.sleep(max(0.0, when - time.monotonic()))
    holder[0] = await asyncio.to_thread(fetch_status, realtime_url(config.url, config.model), config.api_key)


async def _announce(progress: Progress, steady_at: float, config: LoadConfig) -> None:
    if config.ramp_s > 0:
        progress.phase("ramp", config.ramp_s)
    await asyncio.sleep(max(0.0, steady_at - time.monotonic()))
    progress.phase("steady", config.duration_s)


async def run_load(
    config: LoadConfig, progress: Progress | None = None, events: list[str] | None = None
) -> LoadRun:
    """Run `config.sessions` sessions against the server and measure them. `events`: the append texts
    (default: `append_events(config.audio)`), to encode a WAV once for several runs."""
    if config.sessions < 1:
        raise ValueError("need at least one session")
    events = events if events is not None else append_events(config.audio)
    progress = progress or Progress(enabled=False)
    target = config.target()
    progress.start_run(f"N={config.sessions} ", config.sessions)
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    zero = time.monotonic() + START_LEAD_S
    steady_at = zero + config.ramp_s
    stop_at = steady_at + config.duration_s
    lag: list[float] = [0.0]
    status: list[dict[str, Any] | None] = [None]
    helpers = [
        asyncio.create_task(_watch_lag(lag)),
        asyncio.create_task(_status_at(steady_at + config.duration_s / 2, config, status)),
        asyncio.create_task(_announce(progress, steady_at, config)),
    ]
    sessions = [
        drive_session(
            target,
            i,
            start_at=zero + config.ramp_s * i / config.sessions,
            stop_at=stop_at,
            zero=zero,
            events=events,
            counters=progress.counters,
        )
        for i in range(config.sessions)
    ]
    try:
        async with progress.running():
            records = list(await asyncio.gather(*sessions))
        progress.note(f"N={config.sessions} done: {progress.counts()}")
    finally:
        for task in helpers:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*helpers, return_exceptions=True)
    window = Window(config.ramp_s, config.ramp_s + config.duration_s)
    stats = [session_stats(r, window, config.prebuffer_ms / 1000) for r in records]
    return LoadRun(
        config=config,
        records=records,
        window=window,
        stats=stats,
        aggregate=aggregate(stats),
        started_at=started_at,
        server_status=status[0],
        client_loop_lag_max_ms=round(1000 * lag[0], 1),
    )


def with_sessions(config: LoadConfig, sessions: int) -> LoadConfig:
    return replace(config, sessions=sessions)
