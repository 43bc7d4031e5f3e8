"""What "served in real time" means for a run; `--find-max` searches for the largest N that meets it."""

from __future__ import annotations

from dataclasses import dataclass, replace

from serve_app.loadgen.stats import Aggregate


@dataclass(frozen=True)
class Criteria:
    all_admitted: bool = True
    no_errors: bool = True
    max_deficit_pct: float = 2.0
    max_p99_interval_ms: float = 250.0
    audio_in_every_session: bool = True
    """A server that stops sending altogether has no late packets and no deficit: catch it here."""


def _codes(counts: dict[str, int]) -> str:
    return ", ".join(f"{code}: {n}" for code, n in sorted(counts.items()))


def failures(agg: Aggregate, criteria: Criteria) -> list[str]:
    """Why a run does not count as real time, in words (empty: it does)."""
    out: list[str] = []
    if agg.admitted == 0:
        out.append(f"no session of {agg.sessions} was admitted ({_codes(agg.refusals_by_code)})")
        return out
    if criteria.all_admitted and agg.refused:
        out.append(f"{agg.refused} of {agg.sessions} sessions refused ({_codes(agg.refusals_by_code)})")
    if criteria.no_errors and agg.errors_by_code:
        out.append(f"{agg.sessions_with_errors} session(s) saw errors ({_codes(agg.errors_by_code)})")
    if agg.frame_deficit_pct is not None and agg.frame_deficit_pct > criteria.max_deficit_pct:
        out.append(
            f"frame deficit {agg.frame_deficit:g} of {agg.frames_expected:g} frames "
            f"({agg.frame_deficit_pct:.2f} % > {criteria.max_deficit_pct:g} %)"
        )
    p99 = agg.packet_interval_ms.p99
    if p99 is not None and p99 > criteria.max_p99_interval_ms:
        out.append(f"p99 inter-packet interval {p99:.0f} ms > {criteria.max_p99_interval_ms:g} ms")
    if criteria.audio_in_every_session and agg.sessions_without_audio:
        out.append(f"{agg.sessions_without_audio} admitted session(s) received no audio in the steady phase")
    return out


FULL = "server_at_capacity"
"""The server's own "this model is full": said at once, by design (README, "Full means full")."""


def refused_only_as_full(agg: Aggregate, criteria: Criteria) -> bool:
    """The run missed the criteria only because the server refused sessions as full (`server_at_capacity`),
    while every session it admitted held in real time: the server doing what it should at its capacity
    (`--find-max` measures that capacity)."""
    if not agg.refused or agg.admitted == 0 or set(agg.refusals_by_code) != {FULL}:
        return False
    return not failures(agg, replace(criteria, all_admitted=False))
