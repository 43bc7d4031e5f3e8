"""A full server refusing sessions at once is the design, not a failure: the load generator says which it
saw, in its exit status, its summary and its plots (synthetic runs, no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.loadgen.cli import main
from serve_app.loadgen.criteria import Criteria, refused_only_as_full
from serve_app.loadgen.find_max import Step
from serve_app.loadgen.plots import write_plots
from serve_app.loadgen.record import SessionRecord
from serve_app.loadgen.report import build_report, summary_lines
from serve_app.loadgen.runner import LoadConfig, LoadRun
from serve_app.loadgen.stats import Window, aggregate, session_stats
from tests.loadgen.test_stats import stream

WINDOW = Window(0.0, 10.0)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _served(index: int, spacing: float = 0.08) -> SessionRecord:
    record = SessionRecord(index=index, start_s=0.0, admitted_s=0.1)
    record.packets = stream(1.0, 50, spacing=spacing)
    record.done_at = {"r1": record.packets[-1].at}
    record.ended_s = 10.0
    return record


def _refused(index: int, code: str = "server_at_capacity") -> SessionRecord:
    return SessionRecord(index=index, start_s=0.1 * index, refusal=code, ended_s=0.1 * index + 0.01)


def _run(records: list[SessionRecord]) -> LoadRun:
    stats = [session_stats(r, WINDOW, 0.2) for r in records]
    config = LoadConfig(url="ws://127.0.0.1:8000/v1/realtime", sessions=len(records), ramp_s=0, duration_s=10)
    return LoadRun(config, records, WINDOW, stats, aggregate(stats), "2025-01-01T00:00:00Z", None, 0.0)


def test_only_full_refusals_beside_sessions_that_held_count_as_the_server_at_capacity() -> None:
    full = aggregate([session_stats(r, WINDOW, 0.2) for r in [_served(0), _refused(1), _refused(2)]])
    assert refused_only_as_full(full, Criteria())
    unreachable = aggregate([session_stats(r, WINDOW, 0.2) for r in [_served(0), _refused(1, "unreachable")]])
    assert not refused_only_as_full(unreachable, Criteria())
    late = aggregate([session_stats(r, WINDOW, 0.2) for r in [_served(0, spacing=0.3), _refused(1)]])
    assert not refused_only_as_full(late, Criteria())  # what it admitted did not keep real time
    nobody = aggregate([session_stats(_refused(i), WINDOW, 0.2) for i in range(2)])
    assert not refused_only_as_full(nobody, Criteria())
    held = aggregate([session_stats(_served(0), WINDOW, 0.2)])
    assert not refused_only_as_full(held, Criteria())  # nothing refused: simply held


def test_the_summary_says_a_full_server_refused_at_once_as_designed() -> None:
    run = _run([_served(0), _refused(1), _refused(2)])
    report = build_report("t", run.config, Criteria(), runs=[run], machine_info={})
    assert report["held"] is False and report["refused_only_as_full"] is True
    last = summary_lines(report)[-1]
    assert last.startswith("held in real time for the 1 admitted session(s); the other 2 were refused at")
    assert "as designed" in last and "exit status 0" in last


def test_find_max_labels_a_step_with_refusals_refused_not_failed(tmp_path: Path) -> None:
    one = _run([_served(0)])
    two = _run([_served(0), _refused(1)])
    steps = [Step(1, one, []), Step(2, two, ["1 of 2 sessions refused (server_at_capacity: 1)"])]
    report = build_report("t", one.config, Criteria(), steps=steps, machine_info={})
    lines = summary_lines(report)
    assert "N=2    refused: 1 of 2 sessions refused (server_at_capacity: 1)" in lines
    assert not any("failed" in line for line in lines)
    paths = write_plots(report, tmp_path)
    assert [p.name for p in paths] == ["first_audio_cdf.png", "packet_intervals.png", "find_max.png"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in paths)


def test_the_exit_status_is_0_for_a_server_that_is_full_and_1_for_one_that_is_gone(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = {"full": _run([_served(0), _refused(1)]), "gone": _run([_refused(0, "unreachable")])}

    async def fake_run_load(config: LoadConfig, progress: object = None) -> LoadRun:
        return runs[config.model]

    monkeypatch.setattr("serve_app.loadgen.cli.run_load", fake_run_load)
    monkeypatch.setattr("serve_app.loadgen.cli.machine", dict)
    assert main(["--model", "full", "-n", "2", "--no-progress"]) == 0
    assert main(["--model", "gone", "-n", "1", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "refused at once with server_at_capacity" in out and "not real time: no session" in out
