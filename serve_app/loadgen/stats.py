"""Per-session and aggregate statistics: pure functions over recorded timestamps (seconds, one clock).

The server sends audio only inside a response (one per Moshi utterance) and nothing between them, so
everything that judges delivery (packet intervals, frame deficit, underruns) looks inside responses; the
client real-time factor (audio received / wall time) also counts Moshi's silences and is reported as is.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from serve_app.constants import FRAME_S
from serve_app.loadgen.record import Packet, SessionRecord

GRACE_S = FRAME_S
"""A frame counts as due one frame after its real-time slot: delivery jitter below that is no deficit."""
HISTOGRAM_BIN_MS = 10
HISTOGRAM_MAX_MS = 500


@dataclass(frozen=True)
class Window:
    start: float
    end: float

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)

    def contains(self, t: float) -> bool:
        return self.start <= t <= self.end

    def overlap(self, a: float, b: float) -> float:
        return max(0.0, min(b, self.end) - max(a, self.start))


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def by_response(packets: Iterable[Packet]) -> dict[str, list[Packet]]:
    """Packets grouped by response id, in arrival order."""
    groups: dict[str, list[Packet]] = {}
    for packet in packets:
        groups.setdefault(packet.response, []).append(packet)
    return groups


def packet_intervals(packets: Sequence[Packet], window: Window) -> list[float]:
    """Seconds between consecutive audio deltas of the same response, for each delta arriving in the window.
    (The gap between two responses is Moshi being silent, not the server being late.)"""
    out: list[float] = []
    last: dict[str, float] = {}
    for packet in packets:
        previous = last.get(packet.response)
        if previous is not None and window.contains(packet.at):
            out.append(packet.at - previous)
        last[packet.response] = packet.at
    return out


def received_seconds(packets: Iterable[Packet], window: Window) -> float:
    return sum(p.seconds for p in packets if window.contains(p.at))


def _span_end(packets: Sequence[Packet], done_at: float | None, window: Window) -> float:
    """Where a response's delivery is judged to end: its done event, else (still open) the window's end."""
    if done_at is None:
        return window.end
    return min(window.end, max(done_at, packets[-1].at))


def frame_deficit(
    packets: Sequence[Packet], done_at: Mapping[str, float], window: Window
) -> tuple[float, float]:
    """(frames expected, frames missing) in the window: inside each response, 80 ms of audio is due every
    80 ms after its first delta (plus GRACE_S); the deficit is how far delivery fell behind that, counted
    from the window's start (a backlog carried in from before the window is not counted again)."""
    expected_total = missing_total = 0.0
    for response, group in by_response(packets).items():
        first = group[0].at
        end = _span_end(group, done_at.get(response), window)
        start = max(first, window.start)
        if end < start:
            continue

        def due(t: float, first: float = first) -> float:
            return math.floor((t - first - GRACE_S) / FRAME_S) + 1 if t >= first + GRACE_S else 0.0

        def behind(t: float, group: Sequence[Packet] = group) -> float:
            return due(t) - sum(p.seconds for p in group if p.at <= t) / FRAME_S

        expected_total += due(end) - due(start)
        missing_total += max(0.0, behind(end) - max(0.0, behind(start)))
    return expected_total, missing_total


def underrun_seconds(
    packets: Sequence[Packet], done_at: Mapping[str, float], window: Window, prebuffer_s: float
) -> float:
    """Seconds in the window a client's playback buffer was empty while a response was still playing.

    Per response: playback starts once `prebuffer_s` of audio is buffered and runs at real time; whenever
    the buffer runs dry before the next delta (or, for a response not done by the window's end, before the
    end) that time is an underrun, and playback resumes with the next delta."""
    total = 0.0
    for response, group in by_response(packets).items():
        buffered, playing_until = 0.0, None
        for packet in group:
            if playing_until is None:
                buffered += packet.seconds
                if buffered >= prebuffer_s - 1e-9:
                    playing_until = packet.at + buffered
                continue
            if packet.at > playing_until:
                total += window.overlap(playing_until, packet.at)
                playing_until = packet.at
            playing_until += packet.seconds
        done = done_at.get(response)
        if playing_until is not None and (done is None or done > window.end):
            total += window.overlap(playing_until, window.end)
    return total


@dataclass(frozen=True)
class Summary:
    median: float | None
    p99: float | None
    max: float | None
    count: int

    @staticmethod
    def of(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> Summary:
        if not values:
            return Summary(None, None, None, 0)
        scaled = [scale * v for v in values]
        p50, p99 = percentile(scaled, 50), percentile(scaled, 99)
        assert p50 is not None and p99 is not None
        return Summary(round(p50, digits), round(p99, digits), round(max(scaled), digits), len(values))


@dataclass(frozen=True)
class SessionStats:
    index: int
    admitted: bool
    refusal: str | None
    session_id: str
    connect_s: float | None
    """Connect start → session.created."""
    first_audio_s: float | None
    """Connect start → first audio delta."""
    audio_s: float
    """Audio received in the steady window."""
    client_rtf: float
    """audio_s / the steady window (below 1 also while Moshi is silent between utterances)."""
    responses: int
    packet_interval_ms: Summary
    window_frames: float
    """80 ms frames the steady window lasted (for this session: until it ended, if earlier)."""
    expected_frames: float
    """Frames due inside responses in the window."""
    frame_deficit: float
    underrun_s: float
    errors_by_code: dict[str, int]
    closed_by_server: int | None
    frames_sent: int
    send_lag_max_ms: float
    intervals_s: tuple[float, ...] = field(default=(), repr=False)
    """Raw intervals, for the pooled aggregate (left out of the JSON)."""


def session_stats(record: SessionRecord, window: Window, prebuffer_s: float) -> SessionStats:
    live = Window(window.start, min(window.end, record.ended_s if record.ended_s is not None else window.end))
    packets = record.packets
    intervals = packet_intervals(packets, live)
    expected, deficit = frame_deficit(packets, record.done_at, live)
    audio = received_seconds(packets, live)
    return SessionStats(
        index=record.index,
        admitted=record.admitted,
        refusal=record.refusal,
        session_id=record.session_id,
        connect_s=None if record.admitted_s is None else round(record.admitted_s - record.start_s, 4),
        first_audio_s=round(packets[0].at - record.start_s, 4) if packets else None,
        audio_s=round(audio, 3),
        client_rtf=round(audio / window.duration, 4) if window.duration > 0 else 0.0,
        responses=len({p.response for p in packets if live.contains(p.at)}),
        packet_interval_ms=Summary.of(intervals, 1000.0, 1),
        window_frames=round(live.duration / FRAME_S, 1),
        expected_frames=expected,
        frame_deficit=round(deficit, 2),
        underrun_s=round(underrun_seconds(packets, record.done_at, live, prebuffer_s), 3),
        errors_by_code=dict(collections.Counter(record.errors)),
        closed_by_server=record.closed_by_server,
        frames_sent=record.frames_sent,
        send_lag_max_ms=round(1000 * record.send_lag_max_s, 1),
        intervals_s=tuple(intervals),
    )


def histogram(values_ms: Sequence[float]) -> dict[str, object]:
    """Counts per HISTOGRAM_BIN_MS bin up to HISTOGRAM_MAX_MS, and how many lay beyond."""
    edges = np.arange(0, HISTOGRAM_MAX_MS + HISTOGRAM_BIN_MS, HISTOGRAM_BIN_MS)
    counts, _ = np.histogram(np.asarray(values_ms, dtype=float), bins=edges)
    return {
        "bin_ms": HISTOGRAM_BIN_MS,
        "counts": [int(c) for c in counts],
        "over_max": int(sum(v > HISTOGRAM_MAX_MS for v in values_ms)),
    }


@dataclass(frozen=True)
class Aggregate:
    sessions: int
    admitted: int
    refused: int
    refusals_by_code: dict[str, int]
    sessions_with_errors: int
    errors_by_code: dict[str, int]
    sessions_without_audio: int
    """Admitted sessions that received no audio in the steady window."""
    first_audio_s: Summary
    client_rtf_median: float | None
    client_rtf_min: float | None
    packet_interval_ms: Summary
    """Pooled over every admitted session."""
    worst_session_p99_interval_ms: float | None
    frames_expected: float
    frame_deficit: float
    frame_deficit_pct: float | None
    underrun_s: Summary
    underrun_total_s: float
    send_lag_max_ms: float
    packet_interval_histogram: dict[str, object]


def aggregate(stats: Sequence[SessionStats]) -> Aggregate:
    admitted = [s for s in stats if s.admitted]
    pooled = [1000 * v for s in admitted for v in s.intervals_s]
    expected = sum(s.expected_frames for s in admitted)
    deficit = sum(s.frame_deficit for s in admitted)
    errors: collections.Counter[str] = collections.Counter()
    for s in admitted:
        errors.update(s.errors_by_code)
    rtf = [s.client_rtf for s in admitted]
    worst = [s.packet_interval_ms.p99 for s in admitted if s.packet_interval_ms.p99 is not None]
    firsts = [s.first_audio_s for s in admitted if s.first_audio_s is not None]
    return Aggregate(
        sessions=len(stats),
        admitted=len(admitted),
        refused=len(stats) - len(admitted),
        refusals_by_code=dict(collections.Counter(s.refusal or "unknown" for s in stats if not s.admitted)),
        sessions_with_errors=sum(1 for s in admitted if s.errors_by_code),
        errors_by_code=dict(errors),
        sessions_without_audio=sum(1 for s in admitted if s.audio_s == 0),
        first_audio_s=Summary.of(firsts),
        client_rtf_median=percentile(rtf, 50),
        client_rtf_min=min(rtf) if rtf else None,
        packet_interval_ms=Summary.of(pooled, 1.0, 1),
        worst_session_p99_interval_ms=max(worst) if worst else None,
        frames_expected=expected,
        frame_deficit=round(deficit, 2),
        frame_deficit_pct=round(100 * deficit / expected, 3) if expected > 0 else None,
        underrun_s=Summary.of([s.underrun_s for s in admitted]),
        underrun_total_s=round(sum(s.underrun_s for s in admitted), 3),
        send_lag_max_ms=max((s.send_lag_max_ms for s in admitted), default=0.0),
        packet_interval_histogram=histogram(pooled),
    )
