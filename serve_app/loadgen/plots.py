"""PNG plots drawn from a results file alone (so an old run.json can be plotted again)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(report: dict[str, Any]) -> str:
    config = report["config"]
    return f"{config['url']}  ramp {config['ramp_s']:g} s, steady {config['duration_s']:g} s"


def first_audio_cdf(report: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if "find_max" in report:
        curves = [(s["sessions"], s["first_audio_s"]) for s in report["find_max"]["steps"]]
    else:
        values = [s["first_audio_s"] for s in report["sessions"] if s["first_audio_s"] is not None]
        curves = [(len(report["sessions"]), values)]
    longest = 0.0
    for sessions, values in curves:
        if values:
            xs = np.sort(np.asarray(values, dtype=float))
            # Of all sessions started: refused and silent ones never arrive, so the curve stays below 1.
            fraction = np.arange(0, xs.size + 1) / sessions
            (line,) = ax.step(np.concatenate([xs[:1], xs]), fraction, where="post", label=f"N={sessions}")
            # A marker per session: with a few sessions the steps alone read as a lone vertical line.
            ax.plot(xs, fraction[1:], "o", color=line.get_color(), ms=5)
            longest = max(longest, float(xs[-1]))
    ax.set_xlabel("time to first audio delta, s (from connecting)")
    ax.set_ylabel("fraction of the sessions started")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, max(1.0, 1.15 * longest))  # from 0, so a 0.15 s value looks as small as it is
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(_title(report), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def packet_interval_histogram(report: dict[str, Any], path: Path, threshold_ms: float | None) -> None:
    plt = _pyplot()
    hist = report["aggregate"]["packet_interval_histogram"]
    counts = np.asarray(hist["counts"], dtype=float)
    width = hist["bin_ms"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.bar(np.arange(counts.size) * width, counts, width=width, align="edge")
    if threshold_ms is not None:
        ax.axvline(threshold_ms, color="red", lw=0.8, label=f"criterion p99 ≤ {threshold_ms:g} ms")
        ax.legend(fontsize=8)
    ax.set_yscale("symlog", linthresh=1)
    over = hist["over_max"]
    beyond = f"{over} longer ones not drawn" if over else "none longer than the axis"
    ax.set_xlabel(f"interval between audio deltas of a response, ms ({beyond})")
    ax.set_ylabel("intervals")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"N={report['sessions_requested']}  " + _title(report), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def find_max_plot(report: dict[str, Any], path: Path, threshold_ms: float) -> None:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    steps = sorted(report["find_max"]["steps"], key=lambda s: s["sessions"])
    # (N, p99, outcome, refused) of the steps that measured any interval (one where all were refused did
    # not). A step with refusals is marked "refused", not "failed": its p99 may be far below the criterion,
    # the server said it was full.
    points = [
        (s["sessions"], s["aggregate"]["packet_interval_ms"]["p99"], _outcome(s), s["aggregate"]["refused"])
        for s in steps
        if s["aggregate"]["packet_interval_ms"]["p99"] is not None
    ]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([n for n, *_ in points], [p99 for _, p99, *_ in points], "-", color="grey", alpha=0.4)
    for outcome, marker, label in (
        ("held", "o", "held"),
        ("refused", "s", "sessions refused (server full)"),
        ("failed", "x", "failed a real-time criterion"),
    ):
        chosen = [(n, p99, refused) for n, p99, kind, refused in points if kind == outcome]
        if chosen:
            ax.plot([n for n, *_ in chosen], [p99 for _, p99, _ in chosen], marker, label=label, ms=8)
        if outcome == "refused":
            for n, p99, refused in chosen:
                ax.annotate(f"{refused}/{n} refused", (n, p99), textcoords="offset points", xytext=(6, 6),
                            fontsize=8)  # fmt: skip
    ax.axhline(threshold_ms, color="red", lw=0.8, label=f"criterion {threshold_ms:g} ms")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("p99 interval between audio deltas, ms")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"largest N that held: {report['find_max']['max_sessions']}  " + _title(report), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _outcome(step: dict[str, Any]) -> str:
    if step["held"]:
        return "held"
    return "refused" if step["aggregate"]["refused"] else "failed"


def write_plots(report: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    threshold = float(report["criteria"]["max_p99_interval_ms"])
    written = [directory / "first_audio_cdf.png", directory / "packet_intervals.png"]
    first_audio_cdf(report, written[0])
    packet_interval_histogram(report, written[1], threshold)
    if "find_max" in report:
        written.append(directory / "find_max.png")
        find_max_plot(report, written[-1], threshold)
    return written
