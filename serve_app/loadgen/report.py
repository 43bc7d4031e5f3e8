"""The results file: config, criteria, machine, per-session stats and aggregates (and the find-max steps)."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict
from typing import Any

from serve_app.loadgen.criteria import FULL, Criteria, failures, refused_only_as_full
from serve_app.loadgen.find_max import Step, largest_held
from serve_app.loadgen.runner import LoadConfig, LoadRun
from serve_app.loadgen.stats import SessionStats

TOOL = "moshi-realtime-load"
CLIENT_LAG_WARN_MS = 40.0
"""Half a frame: a client loop this late sends and reads late itself, so the server is judged unfairly."""


def machine() -> dict[str, Any]:
    """The benchmarks' machine description, of this (the client) machine, and the git commit of the
    working directory, as the benchmarks record it."""
    os.environ.setdefault("GIT_OPTIONAL_LOCKS", "0")  # describing a checkout must not rewrite its index
    try:
        import torch

        from serve_app.bench.engine_bench import git_commit, machine_info

        info = {**machine_info(torch.device("cpu")), "commit": git_commit()}
    except ImportError:  # a client-only install without the engine's dependencies
        info = {
            "nproc": os.cpu_count(),
            "cpu_model": platform.processor(),
            "python": platform.python_version(),
        }
    return {**info, "hostname": platform.node(), "role": "load generator (client)"}


def session_json(stats: SessionStats) -> dict[str, Any]:
    out = asdict(stats)
    del out["intervals_s"]
    return out


def run_json(run: LoadRun, criteria: Criteria) -> dict[str, Any]:
    fails = failures(run.aggregate, criteria)
    return {
        "sessions_requested": run.config.sessions,
        "started_at": run.started_at,
        "steady_window_s": [run.window.start, run.window.end],
        "held": not fails,
        "failures": fails,
        "refused_only_as_full": refused_only_as_full(run.aggregate, criteria),
        "aggregate": asdict(run.aggregate),
        "client_loop_lag_max_ms": run.client_loop_lag_max_ms,
        "server_status": run.server_status,
        "sessions": [session_json(s) for s in run.stats],
    }


def build_report(
    command: str,
    config: LoadConfig,
    criteria: Criteria,
    runs: list[LoadRun] | None = None,
    steps: list[Step] | None = None,
    machine_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A plain run (`runs` of one) or a find-max search (`steps`): the top level then shows the largest N
    that held (or, if none did, the last run) and `find_max` every step. `machine_info`: `machine()` taken
    before the run (its load average then means something; default: now)."""
    report: dict[str, Any] = {
        "tool": TOOL,
        "command": command,
        "config": config.to_json(),
        "criteria": asdict(criteria),
        "machine": machine_info if machine_info is not None else machine(),
    }
    if steps is not None:
        best = largest_held(steps)
        shown = best if best is not None else steps[-1]
        report.update(run_json(shown.run, criteria))
        report["find_max"] = {
            "max_sessions": best.sessions if best is not None else 0,
            "steps": [
                {
                    "sessions": s.sessions,
                    "held": s.held,
                    "failures": s.failures,
                    "aggregate": asdict(s.run.aggregate),
                    "first_audio_s": [x.first_audio_s for x in s.run.stats if x.first_audio_s is not None],
                    "client_loop_lag_max_ms": s.run.client_loop_lag_max_ms,
                }
                for s in steps
            ],
        }
    else:
        assert runs, "a report needs a run or find-max steps"
        report.update(run_json(runs[-1], criteria))
    return report


def step_verdict(refused: int, fails: list[str]) -> str:
    """A step that missed the criteria: "refused" when the server turned sessions away (it was full),
    "failed" when the sessions it took did not keep real time."""
    return ("refused: " if refused else "failed: ") + "; ".join(fails)


def _fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """What a person reads at the end of a run."""
    agg = report["aggregate"]
    config = report["config"]
    first, interval, underrun = agg["first_audio_s"], agg["packet_interval_ms"], agg["underrun_s"]
    refusals = ", ".join(f"{k}: {v}" for k, v in sorted(agg["refusals_by_code"].items()))
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(agg["errors_by_code"].items()))
    best = "find-max, the largest N that held: " if report.get("find_max", {}).get("max_sessions") else ""
    lines = [
        f"{best}{report['sessions_requested']} session(s) on {config['url']}, ramp {config['ramp_s']:g} s, "
        f"steady {config['duration_s']:g} s",
        f"admitted         {agg['admitted']}/{agg['sessions']}"
        + (f"  refused: {refusals}" if refusals else ""),
        f"errors           {errors or 'none'}",
        f"first audio      median {_fmt(first['median'], ' s')}  p99 {_fmt(first['p99'], ' s')}  "
        f"max {_fmt(first['max'], ' s')}",
        f"client RTF       median {_fmt(agg['client_rtf_median'])}  min {_fmt(agg['client_rtf_min'])}"
        "  (audio received / wall time; Moshi's silences count)",
        f"packet interval  median {_fmt(interval['median'], ' ms', 0)}  p99 {_fmt(interval['p99'], ' ms', 0)}"
        f"  max {_fmt(interval['max'], ' ms', 0)}  ({interval['count']} intervals inside responses)",
        f"frame deficit    {agg['frame_deficit']:g} of {agg['frames_expected']:g} frames due inside "
        f"responses ({_fmt(agg['frame_deficit_pct'], ' %')})",
        f"underrun         total {agg['underrun_total_s']:.2f} s  max per session "
        f"{_fmt(underrun['max'], ' s')}  (prebuffer {config['prebuffer_ms']:g} ms)",
    ]
    lag = report["client_loop_lag_max_ms"]
    if lag > CLIENT_LAG_WARN_MS:
        lines.append(
            f"warning: this client's event loop ran up to {lag:.0f} ms late; the numbers may show the "
            "client's limit, not the server's (run fewer sessions per process)"
        )
    if "find_max" in report:
        for step in report["find_max"]["steps"]:
            verdict = "held" if step["held"] else step_verdict(step["aggregate"]["refused"], step["failures"])
            lines.append(f"N={step['sessions']:<4} {verdict}")
        lines.append(f"largest N that held in real time: {report['find_max']['max_sessions']}")
    elif report["held"]:
        lines.append("held in real time")
    elif report.get("refused_only_as_full"):
        admitted, refused = agg["admitted"], agg["refused"]
        lines.append(
            f"held in real time for the {admitted} admitted session(s); the other {refused} were refused at "
            f"once with {FULL}: the server is full at {admitted} session(s) of this model, as designed "
            "(exit status 0; --find-max measures the largest N, --allow-refusals counts such a run as held)"
        )
    else:
        lines.append("not real time: " + "; ".join(report["failures"]))
    return lines
