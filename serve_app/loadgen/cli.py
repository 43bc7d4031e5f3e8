"""moshi-realtime-load: N concurrent real-time speech sessions against any OpenAI-Realtime `/v1/realtime` URL.

Each session streams a WAV (default: the committed festival speech fixture, looped) as 80 ms appends at
real time and reads everything the server sends. Sessions start evenly over `--ramp-s`; the steady phase
(`--duration-s`) that follows is what is measured: time to first audio, client real-time factor, interval
between audio deltas, frame deficit and playback underruns inside Moshi's responses, errors, refusals.

  moshi-realtime-load --url ws://gpu-host:8000/v1/realtime --sessions 16 --out run.json --plots plots/
  moshi-realtime-load --url ws://gpu-host:8000/v1/realtime --find-max --out max.json
  moshi-realtime-load --compare before.json after.json

Exit status: 0 when the run held in real time (find-max: when N=1 did), or when every session the server
admitted held and it refused the others at once as full (`server_at_capacity`: a server at its capacity,
as designed); 1 when not; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serve_app.loadgen.audio import AudioError, append_events
from serve_app.loadgen.compare import compare_files
from serve_app.loadgen.criteria import Criteria
from serve_app.loadgen.find_max import MaxSearch, Step, find_max
from serve_app.loadgen.plots import write_plots
from serve_app.loadgen.progress import Progress
from serve_app.loadgen.report import TOOL, build_report, machine, summary_lines
from serve_app.loadgen.runner import LoadConfig, LoadRun, run_load
from serve_app.loadgen.session_driver import realtime_url


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=TOOL, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = p.add_argument_group("target")
    target.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime", help="default: %(default)s")
    target.add_argument("--model", default="moshi-sft", help="sent as ?model= (default: %(default)s)")
    target.add_argument("--api-key", default=None, help="Bearer key (default: $OPENAI_API_KEY, if set)")
    load = p.add_argument_group("load")
    load.add_argument(
        "-n", "--sessions", type=int, default=4, help="concurrent sessions (default: %(default)s)"
    )
    load.add_argument(
        "--ramp-s",
        type=float,
        default=5.0,
        help="sessions start spread over this long (default: %(default)s)",
    )
    load.add_argument(
        "--duration-s", type=float, default=30.0, help="steady phase, measured (default: %(default)s)"
    )
    load.add_argument("--audio", type=Path, default=None, help="24 kHz mono 16-bit WAV to stream, looped")
    load.add_argument(
        "--prebuffer-ms",
        type=float,
        default=200.0,
        help="simulated playback prebuffer (default: %(default)s)",
    )
    load.add_argument("--no-server-vad", action="store_true", help="turn server VAD off in each session")
    load.add_argument("--connect-timeout-s", type=float, default=10.0, help="default: %(default)s")
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    out.add_argument("--plots", type=Path, default=None, help="write PNG plots into this directory")
    out.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    out.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("A.json", "B.json"),
        help="print two runs side by side, exit",
    )
    search = p.add_argument_group("find-max")
    search.add_argument("--find-max", action="store_true", help="largest N that holds the criteria")
    search.add_argument("--start", type=int, default=1, help="first N (default: %(default)s)")
    search.add_argument(
        "--step", type=int, default=None, help="grow N by this (default: double, then bisect)"
    )
    search.add_argument(
        "--max-sessions", type=int, default=512, help="never try more than this (default: %(default)s)"
    )
    search.add_argument(
        "--settle-s", type=float, default=3.0, help="pause between runs (default: %(default)s)"
    )
    crit = p.add_argument_group("criteria (a run holds in real time when all are met)")
    crit.add_argument("--max-p99-interval-ms", type=float, default=250.0, help="default: %(default)s")
    crit.add_argument("--max-deficit-pct", type=float, default=2.0, help="default: %(default)s")
    crit.add_argument("--allow-refusals", action="store_true", help="refused sessions do not fail a run")
    crit.add_argument("--allow-errors", action="store_true", help="error events / closes do not fail a run")
    crit.add_argument("--allow-silent", action="store_true", help="sessions without audio do not fail a run")
    return p


def config_of(args: argparse.Namespace) -> LoadConfig:
    return LoadConfig(
        url=args.url,
        model=args.model,
        sessions=args.sessions,
        ramp_s=args.ramp_s,
        duration_s=args.duration_s,
        audio=args.audio,
        api_key=args.api_key if args.api_key is not None else os.environ.get("OPENAI_API_KEY") or None,
        prebuffer_ms=args.prebuffer_ms,
        server_vad=not args.no_server_vad,
        connect_timeout_s=args.connect_timeout_s,
    )


def criteria_of(args: argparse.Namespace) -> Criteria:
    return Criteria(
        all_admitted=not args.allow_refusals,
        no_errors=not args.allow_errors,
        max_deficit_pct=args.max_deficit_pct,
        max_p99_interval_ms=args.max_p99_interval_ms,
        audio_in_every_session=not args.allow_silent,
    )


def _fail(message: str) -> int:
    print(f"{TOOL}: error: {message}", file=sys.stderr)
    return 2


def _write(report: dict[str, Any], args: argparse.Namespace) -> None:
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    if args.plots is not None:
        for path in write_plots(report, args.plots):
            print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(arguments)
    if args.compare is not None:
        try:
            print(compare_files(*args.compare))
        except (OSError, ValueError) as exc:
            return _fail(f"cannot compare: {exc}")
        return 0
    if args.sessions < 1 or args.duration_s <= 0 or args.ramp_s < 0:
        return _fail("need --sessions >= 1, --duration-s > 0 and --ramp-s >= 0")
    config, criteria = config_of(args), criteria_of(args)
    try:
        realtime_url(config.url, config.model)
        append_events(config.audio)  # fail on a bad WAV before any session connects
        search = MaxSearch(args.start, args.step, args.max_sessions) if args.find_max else None
    except (AudioError, ValueError, OSError, wave.Error) as exc:
        return _fail(str(exc))
    progress = Progress(enabled=not args.no_progress)
    command = shlex.join([TOOL, *arguments])
    described = machine()  # before the run: its torch import stays out of it, its load average is idle
    runs: list[LoadRun] | None = None
    steps: list[Step] | None = None
    try:
        if search is not None:
            steps = asyncio.run(find_max(config, criteria, search, progress, args.settle_s))
        else:
            runs = [asyncio.run(run_load(config, progress))]
    except KeyboardInterrupt:
        print(f"{TOOL}: interrupted", file=sys.stderr)
        return 130
    report = build_report(command, config, criteria, runs=runs, steps=steps, machine_info=described)
    print("\n".join(summary_lines(report)))
    _write(report, args)
    if steps is not None:
        return 0 if report["find_max"]["max_sessions"] > 0 else 1
    return 0 if report["held"] or report["refused_only_as_full"] else 1
