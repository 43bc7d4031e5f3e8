"""What an ingress last heard from each model replica about its capacity, and how long ago.

A replica reports its capacity (serve_app/engine/capacity.py) when it admits or refuses a session and
again when a session's lease ends, after the slot is freed. Between reports the figures stand still, so
`/v1/status` gives each with its age: an idle replica reads as idle (its last report came after its last
session left), and an old figure reads as old rather than as now.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from serve_app.engine.capacity import CapacityReport

ReportEvent = Literal["admission", "refusal", "session_end"]

STATUS_NOTE = (
    "per model, each replica's capacity as it last reported it to this ingress (at an admission, a refusal "
    "or a session's end), `age_s` seconds ago; a model with no entry has had no session through this "
    "ingress yet"
)
"""How `/v1/status` reads, for whoever opens it without the docs."""


@dataclass(frozen=True, slots=True)
class _Heard:
    report: CapacityReport
    event: ReportEvent
    at: float


class ReplicaReports:
    """model id → replica id → its latest capacity report. Loop-bound (no locking)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heard: dict[str, dict[str, _Heard]] = {}

    def record(self, model_id: str, replica_id: str, report: CapacityReport, event: ReportEvent) -> None:
        self._heard.setdefault(model_id, {})[replica_id] = _Heard(report, event, self._clock())

    def snapshot(
        self, model_ids: Iterable[str], sessions_here: Mapping[str, int]
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """JSON-ready: each report's figures, `reported_at` (which event), `age_s`, and the sessions this
        ingress holds on the replica now (`sessions_from_this_ingress`)."""
        now = self._clock()
        return {
            mid: {
                rid: {
                    **asdict(heard.report),
                    "reported_at": heard.event,
                    "age_s": round(now - heard.at, 1),
                    "sessions_from_this_ingress": sessions_here.get(rid, 0),
                }
                for rid, heard in self._heard.get(mid, {}).items()
            }
            for mid in model_ids
        }
