"""/v1/status through a Ray ingress: each replica's capacity as it last reported it, and how old that is."""

from __future__ import annotations

from serve_app.engine.capacity import CapacityReport
from serve_app.server.replica_reports import ReplicaReports


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _report(used: int, admitting: bool) -> CapacityReport:
    return CapacityReport(
        slots_total=1, slots_used=used, tick_p50_s=0.0, tick_p90_s=0.0, per_session_s=0.0, capacity=1,
        admitting=admitting,
    )  # fmt: skip


def test_a_replica_reads_idle_after_its_last_session_ended_and_each_figure_has_its_age() -> None:
    clock = Clock()
    reports = ReplicaReports(clock)
    assert reports.snapshot(["m"], {}) == {"m": {}}  # no session yet: nothing heard
    reports.record("m", "r1", _report(used=1, admitting=False), "admission")  # full while it holds one
    clock.now += 4.0
    full = reports.snapshot(["m"], {"r1": 1})["m"]["r1"]
    assert (full["slots_used"], full["admitting"], full["reported_at"]) == (1, False, "admission")
    assert full["age_s"] == 4.0 and full["sessions_from_this_ingress"] == 1

    reports.record("m", "r1", _report(used=0, admitting=True), "session_end")
    clock.now += 2.5
    idle = reports.snapshot(["m"], {})["m"]["r1"]
    assert (idle["slots_used"], idle["admitting"], idle["reported_at"]) == (0, True, "session_end")
    assert idle["age_s"] == 2.5 and idle["sessions_from_this_ingress"] == 0


def test_reports_are_kept_per_model_and_replica() -> None:
    reports = ReplicaReports(Clock())
    reports.record("a", "r1", _report(used=1, admitting=False), "refusal")
    reports.record("b", "r2", _report(used=0, admitting=True), "session_end")
    snapshot = reports.snapshot(["a", "b", "c"], {})
    assert set(snapshot) == {"a", "b", "c"} and snapshot["c"] == {}
    assert list(snapshot["a"]) == ["r1"] and snapshot["a"]["r1"]["reported_at"] == "refusal"
    assert list(snapshot["b"]) == ["r2"] and snapshot["b"]["r2"]["admitting"] is True
