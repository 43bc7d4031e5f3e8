"""The load generator's statistics on synthetic timings: what each measure counts, and what it does not."""

from __future__ import annotations

import base64

import pytest

from serve_app.constants import FRAME_S
from serve_app.loadgen.compare import compare_reports
from serve_app.loadgen.criteria import Criteria, failures
from serve_app.loadgen.find_max import MaxSearch
from serve_app.loadgen.record import Packet, SessionRecord
from serve_app.loadgen.server_status import status_url
from serve_app.loadgen.session_driver import base64_size, output_bytes_per_second, realtime_url
from serve_app.loadgen.stats import (
    Window,
    aggregate,
    frame_deficit,
    packet_intervals,
    session_stats,
    underrun_seconds,
)


def stream(start: float, count: int, spacing: float = FRAME_S, response: str = "r1") -> list[Packet]:
    """`count` 80 ms deltas of one response, the first at `start`, then every `spacing` seconds."""
    return [Packet(start + k * spacing, FRAME_S, response) for k in range(count)]


WINDOW = Window(0.0, 100.0)


def test_intervals_stay_inside_a_response_and_inside_the_window() -> None:
    packets = stream(1.0, 5) + stream(3.0, 3, response="r2")
    intervals = packet_intervals(packets, WINDOW)
    # 4 gaps in r1, 2 in r2; the 1.68 s of silence between the two responses is not a late packet.
    assert intervals == pytest.approx([FRAME_S] * 6)
    assert packet_intervals(packets, Window(1.2, 10.0)) == pytest.approx([FRAME_S] * 4)  # r1's 3rd on


def test_a_response_delivered_in_real_time_has_no_deficit() -> None:
    packets = stream(1.0, 50)
    done = {"r1": packets[-1].at + 0.001}
    expected, missing = frame_deficit(packets, done, WINDOW)
    assert missing == 0
    assert 48 <= expected <= 50


def test_delivery_at_nine_tenths_of_real_time_misses_one_frame_in_ten() -> None:
    packets = stream(1.0, 100, spacing=FRAME_S / 0.9)
    expected, missing = frame_deficit(packets, {"r1": packets[-1].at}, WINDOW)
    assert 9 <= missing <= 11
    assert 108 <= expected <= 111


def test_a_response_that_stops_arriving_before_the_window_ends_counts_the_stall() -> None:
    packets = stream(1.0, 20)  # last delta at 2.52 s, never done
    _, missing = frame_deficit(packets, {}, Window(0.0, 3.52))
    assert missing == pytest.approx(1.0 / FRAME_S - 1, abs=1)  # a second of frames, less the grace frame
    _, finished = frame_deficit(packets, {"r1": 2.53}, Window(0.0, 3.52))
    assert finished == 0  # the same response, done: nothing was missing


def test_a_backlog_from_before_the_window_is_not_counted_again() -> None:
    slow = stream(0.0, 30, spacing=2 * FRAME_S)  # half real time until 4.64 s
    healthy = [Packet(slow[-1].at + (k + 1) * FRAME_S, FRAME_S, "r1") for k in range(40)]
    packets = slow + healthy
    _, before = frame_deficit(packets, {"r1": packets[-1].at}, Window(0.0, 4.7))
    _, inside = frame_deficit(packets, {"r1": packets[-1].at}, Window(4.7, 100.0))
    assert before >= 25
    assert inside <= 1


def test_underrun_counts_the_time_the_playback_buffer_ran_dry() -> None:
    healthy = stream(0.0, 10)
    assert underrun_seconds(healthy, {"r1": 0.8}, WINDOW, prebuffer_s=0.2) == 0
    late = stream(0.0, 10) + [Packet(0.72 + 0.58 + k * FRAME_S, FRAME_S, "r1") for k in range(5)]
    # Playback starts at the 3rd delta with 240 ms buffered and stays 240 ms ahead: after the last delta
    # before the hole (0.72 s) it plays until 0.96 s; the next delta arrives at 1.30 s.
    assert underrun_seconds(late, {"r1": 1.7}, WINDOW, prebuffer_s=0.2) == pytest.approx(0.34, abs=1e-6)
    # A 500 ms prebuffer bridges almost all of the same hole.
    assert underrun_seconds(late, {"r1": 1.7}, WINDOW, prebuffer_s=0.5) == pytest.approx(0.0, abs=0.05)


def test_underrun_of_an_open_response_runs_to_the_window_end_and_not_past_a_done_one() -> None:
    packets = stream(0.0, 5)  # playback starts at 0.16 s (3rd delta) and runs dry at 0.56 s
    assert underrun_seconds(packets, {}, Window(0.0, 2.0), 0.2) == pytest.approx(2.0 - 0.56)
    assert underrun_seconds(packets, {"r1": 0.33}, Window(0.0, 2.0), 0.2) == 0
    # Two responses a second apart: the silence between them is not an underrun.
    two = stream(0.0, 5) + stream(1.5, 5, response="r2")
    assert underrun_seconds(two, {"r1": 0.33, "r2": 1.83}, Window(0.0, 3.0), 0.2) == 0


def test_session_stats_from_a_record() -> None:
    record = SessionRecord(index=3, start_s=0.5, admitted_s=0.6, session_id="sess_x")
    record.packets = stream(2.0, 25) + stream(5.0, 25, response="r2")  # 4 s of audio
    record.done_at = {"r1": 3.93, "r2": 6.93}
    record.errors = ["input_audio_rate_exceeded"]
    record.ended_s = 10.0
    stats = session_stats(record, Window(2.0, 10.0), prebuffer_s=0.2)
    assert stats.admitted and stats.first_audio_s == pytest.approx(1.5)
    assert stats.connect_s == pytest.approx(0.1)
    assert stats.audio_s == pytest.approx(4.0) and stats.client_rtf == pytest.approx(0.5)
    assert stats.responses == 2 and stats.frame_deficit == 0 and stats.underrun_s == 0
    assert stats.packet_interval_ms.median == pytest.approx(80.0) and stats.packet_interval_ms.count == 48
    assert stats.window_frames == pytest.approx(100)
    assert stats.errors_by_code == {"input_audio_rate_exceeded": 1}


def _record(index: int, spacing: float = FRAME_S) -> SessionRecord:
    record = SessionRecord(index=index, start_s=0.0, admitted_s=0.1)
    record.packets = stream(1.0, 50, spacing=spacing)
    record.done_at = {"r1": record.packets[-1].at}
    record.ended_s = 10.0
    return record


def test_aggregate_and_criteria() -> None:
    window = Window(0.0, 10.0)
    refused = SessionRecord(index=2, start_s=0.2, refusal="server_at_capacity", ended_s=0.3)
    good = [session_stats(_record(i), window, 0.2) for i in range(2)]
    agg = aggregate([*good, session_stats(refused, window, 0.2)])
    assert (agg.sessions, agg.admitted, agg.refused) == (3, 2, 1)
    assert agg.refusals_by_code == {"server_at_capacity": 1}
    assert agg.packet_interval_ms.p99 == pytest.approx(80.0) and agg.packet_interval_ms.count == 98
    assert agg.frame_deficit_pct == 0 and agg.sessions_without_audio == 0
    counts = agg.packet_interval_histogram["counts"]
    assert isinstance(counts, list) and sum(counts) == 98
    assert failures(agg, Criteria()) == ["1 of 3 sessions refused (server_at_capacity: 1)"]
    assert failures(agg, Criteria(all_admitted=False)) == []

    # One session whose deltas come 300 ms apart: p99 and deficit both fail.
    slow = aggregate([*good, session_stats(_record(3, spacing=0.3), window, 0.2)])
    reasons = failures(slow, Criteria())
    assert any(r.startswith("p99 inter-packet interval 300 ms") for r in reasons)
    assert any(r.startswith("frame deficit") for r in reasons)
    assert failures(slow, Criteria(max_p99_interval_ms=400, max_deficit_pct=80)) == []


def test_no_admitted_session_fails_with_the_refusal_codes() -> None:
    refused = [SessionRecord(index=i, start_s=0, refusal="unreachable", ended_s=0) for i in range(2)]
    agg = aggregate([session_stats(r, WINDOW, 0.2) for r in refused])
    assert agg.admitted == 0 and agg.first_audio_s.median is None and agg.frame_deficit_pct is None
    assert failures(agg, Criteria(all_admitted=False)) == ["no session of 2 was admitted (unreachable: 2)"]


def test_max_search_doubles_then_bisects() -> None:
    capacity = 6
    search = MaxSearch()
    tried = []
    n: int | None = search.first()
    while n is not None:
        tried.append(n)
        n = search.record(n, n <= capacity)
    assert tried == [1, 2, 4, 8, 6, 7] and search.best == 6


def test_max_search_in_steps_and_when_nothing_holds() -> None:
    search = MaxSearch(start=2, step=3, limit=100)
    tried = []
    n: int | None = search.first()
    while n is not None:
        tried.append(n)
        n = search.record(n, n <= 6)
    assert tried == [2, 5, 8] and search.best == 5
    none = MaxSearch()
    assert none.record(1, False) is None and none.best == 0
    capped = MaxSearch(limit=5)
    assert [capped.record(n, True) for n in (1, 2, 4, 5)] == [2, 4, 5, None]


def test_urls_and_wire_sizes() -> None:
    assert realtime_url("ws://h:1/v1", "m") == "ws://h:1/v1/realtime?model=m"
    assert realtime_url("ws://h:1", "m") == "ws://h:1/v1/realtime?model=m"
    assert realtime_url("wss://h/v1/realtime?model=x&a=1", "m") == "wss://h/v1/realtime?model=x&a=1"
    with pytest.raises(ValueError, match="ws://"):
        realtime_url("http://h/v1/realtime", "m")
    assert status_url("wss://h/p/v1/realtime?model=m") == "https://h/p/v1/status"
    assert status_url("ws://h:8/realtime") == "http://h:8/v1/status"
    for size in (3838, 3839, 3840):
        assert base64_size(base64.b64encode(bytes(size)).decode()) == size
    assert output_bytes_per_second({"audio": {"output": {"format": {"type": "audio/pcm"}}}}) == 48000
    assert output_bytes_per_second({"audio": {"output": {"format": {"type": "audio/pcmu"}}}}) == 8000
    assert output_bytes_per_second({"output_audio_format": "g711_alaw"}) == 8000


def test_compare_puts_two_runs_side_by_side_with_ratios() -> None:
    def report(p99: float, admitted: int) -> dict[str, object]:
        return {
            "sessions_requested": 4,
            "aggregate": {"admitted": admitted, "packet_interval_ms": {"p99": p99}, "errors_by_code": {}},
        }

    table = compare_reports(report(100.0, 4), report(200.0, 2))
    lines = {line.split("  ")[0].strip(): line.split() for line in table.splitlines()}
    assert lines["packet interval p99, ms"][-3:] == ["100", "200", "2.00x"]
    assert lines["admitted"][-3:] == ["4", "2", "0.50x"]
    assert "find-max" not in table  # neither file has it
