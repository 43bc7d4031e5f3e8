"""The load generator end to end against the in-process server: as a library, as `python -m
serve_app.loadgen` (JSON, PNGs, progress lines), `--compare`, and refusals that must not crash it.

Whether a run holds in real time depends on this machine's load, so only what does not is asserted:
admission, pacing, audio and its bookkeeping, the files and their shape.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_asyncio

from serve_app.constants import FRAME_S
from serve_app.loadgen import Criteria, LoadConfig, LoadRun, run_load
from serve_app.loadgen.cli import main
from serve_app.loadgen.find_max import MaxSearch, find_max
from serve_app.loadgen.plots import write_plots
from serve_app.loadgen.report import build_report, summary_lines
from tests.fixtures.net import free_port
from tests.server.conftest import RunningServer

ROOT = Path(__file__).resolve().parents[2]
RAMP_S, STEADY_S = 0.5, 4.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def wait_idle(server: RunningServer, model: str) -> None:
    """Until the model holds no session (a previous test's slots are released a moment after it closes)."""
    for _ in range(100):
        if server.gateway.status()[model]["local"]["slots_used"] == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{model} still holds sessions")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def library_run(local_server: RunningServer) -> LoadRun:
    # The API base (ws://host/v1): the load generator adds /realtime and ?model= itself.
    config = LoadConfig(url=local_server.ws_base, sessions=2, ramp_s=RAMP_S, duration_s=STEADY_S)
    return await run_load(config)


def test_two_paced_sessions_are_admitted_and_measured(library_run: LoadRun) -> None:
    agg = library_run.aggregate
    assert (agg.sessions, agg.admitted, agg.refused) == (2, 2, 0)
    assert agg.errors_by_code == {} and agg.refusals_by_code == {}
    assert sum(s.audio_s for s in library_run.stats) > 0
    assert agg.first_audio_s.median is not None and 0 < agg.first_audio_s.median < RAMP_S + STEADY_S
    assert agg.packet_interval_ms.count > 0 and agg.frames_expected > 0
    for record in library_run.records:
        assert record.admitted and record.session_id.startswith("sess_")
        assert record.admitted_s is not None and record.ended_s is not None
        # Real time, never ahead: one append per 80 ms from admission to the end of the steady phase.
        slots = (RAMP_S + STEADY_S - record.admitted_s) / FRAME_S
        assert 0.9 * slots <= record.frames_sent <= slots + 2
        assert record.ended_s == pytest.approx(RAMP_S + STEADY_S, abs=0.5)
        assert all(p.response.startswith("resp_") for p in record.packets)
        if record.packets:  # every response but the one still open at the end had its done events
            assert {p.response for p in record.packets} - {record.packets[-1].response} <= set(record.done_at)
        assert all(abs(p.seconds - FRAME_S) < 1e-9 for p in record.packets)  # one Mimi frame per delta
    status = library_run.server_status
    assert status is not None and status["models"]["moshi-sft"]["local"]["slots_used"] == 2


def test_the_cli_writes_json_plots_and_compares(
    library_run: LoadRun, local_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, plots = tmp_path / "cli.json", tmp_path / "plots"
    argv = ["--url", f"{local_server.ws_base}/realtime", "--sessions", "2", "--ramp-s", str(RAMP_S)]
    argv += ["--duration-s", str(STEADY_S), "--out", str(out), "--plots", str(plots)]
    done = subprocess.run(
        [sys.executable, "-m", "serve_app.loadgen", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OPENAI_API_KEY": "sk-not-written-anywhere"},
    )
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(out.read_text())
    assert done.returncode == (0 if report["held"] else 1), done.stdout + done.stderr
    assert report["tool"] == "moshi-realtime-load" and report["sessions_requested"] == 2
    assert report["config"]["api_key_set"] is True and "sk-not-written-anywhere" not in out.read_text()
    assert report["config"]["url"].endswith("/v1/realtime?model=moshi-sft")
    assert report["config"]["audio"].endswith("tests/fixtures/speech/sentences.wav")
    agg = report["aggregate"]
    assert (agg["admitted"], agg["refused"]) == (2, 0)
    assert agg["first_audio_s"]["median"] is not None and agg["first_audio_s"]["median"] > 0
    assert sum(s["audio_s"] for s in report["sessions"]) > 0 and len(report["sessions"]) == 2
    assert report["machine"]["nproc"] and report["machine"]["cpu_model"] is not None
    assert report["failures"] == [] if report["held"] else report["failures"]
    # Not a terminal: one line per phase on stderr, no bar redrawn with carriage returns.
    phases = [line for line in done.stderr.splitlines() if line.startswith("[loadgen] N=2 ")]
    assert [line.split()[2] for line in phases] == ["ramp", "steady", "done:"] and "\r" not in done.stderr
    assert "admitted         2/2" in done.stdout and f"wrote {out}" in done.stdout
    for name in ("first_audio_cdf.png", "packet_intervals.png"):
        data = (plots / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000

    library = tmp_path / "library.json"
    library.write_text(
        json.dumps(build_report("library", library_run.config, Criteria(), runs=[library_run]))
    )
    assert main(["--compare", str(library), str(out)]) == 0
    table = capsys.readouterr().out
    rows = {line.split("  ")[0].strip(): line.split() for line in table.splitlines()}
    assert rows["sessions"][-3:] == ["2", "2", "1.00x"]
    assert rows["admitted"][-3:] == ["2", "2", "1.00x"]
    assert "packet interval p99, ms" in rows and "find-max: largest N held" not in rows


def test_an_unreachable_url_is_reported_as_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "refused.json"
    url = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    argv = ["--url", url, "--sessions", "2", "--ramp-s", "0", "--duration-s", "1", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    report = json.loads(out.read_text())
    assert report["aggregate"]["refused"] == 2 and report["aggregate"]["refusals_by_code"] == {
        "unreachable": 2
    }
    assert report["failures"] == ["no session of 2 was admitted (unreachable: 2)"]
    assert all(s["refusal"] == "unreachable" and s["first_audio_s"] is None for s in report["sessions"])
    assert "not real time: no session of 2 was admitted (unreachable: 2)" in captured.out


async def test_sessions_beyond_a_full_model_are_refused(local_server: RunningServer) -> None:
    # moshi-base has 2 slots in the fixture, admitted by slot count alone: the third session is refused.
    config = LoadConfig(url=local_server.ws_base, model="moshi-base", sessions=3, ramp_s=0.3, duration_s=1.0)
    await wait_idle(local_server, "moshi-base")
    run = await run_load(config)
    assert (run.aggregate.admitted, run.aggregate.refused) == (2, 1)
    assert run.aggregate.refusals_by_code == {"server_at_capacity": 1}
    assert run.stats[2].refusal == "server_at_capacity" and run.stats[2].first_audio_s is None
    assert run.aggregate.errors_by_code == {}  # a refusal is not an error of an admitted session


async def test_find_max_stops_where_the_model_runs_out_of_slots(
    local_server: RunningServer, tmp_path: Path
) -> None:
    # Criteria narrowed to admission and errors: on 2 busy cores the tiny model need not keep real time,
    # but moshi-base's 2 slots bound N whatever the machine does.
    criteria = Criteria(max_deficit_pct=100.0, max_p99_interval_ms=60_000.0, audio_in_every_session=False)
    config = LoadConfig(url=local_server.ws_base, model="moshi-base", ramp_s=0.2, duration_s=1.5)
    await wait_idle(local_server, "moshi-base")
    steps = await find_max(config, criteria, MaxSearch(limit=8), settle_s=1.0)
    assert [(s.sessions, s.held) for s in steps] == [(1, True), (2, True), (4, False), (3, False)]
    assert steps[2].failures == ["2 of 4 sessions refused (server_at_capacity: 2)"]
    report = build_report("find-max", config, criteria, steps=steps)
    assert report["find_max"]["max_sessions"] == 2 and report["sessions_requested"] == 2
    assert summary_lines(report)[-1] == "largest N that held in real time: 2"
    paths = write_plots(report, tmp_path)
    assert [p.name for p in paths] == ["first_audio_cdf.png", "packet_intervals.png", "find_max.png"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in paths)
