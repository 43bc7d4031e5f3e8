"""The delegate benchmark's `--smoke` run (serve_app/bench/delegate_bench.py): one real round trip through
the in-process server and a scripted delegate, a few timed asks; its numbers reach the JSON and the
"Delegate (tools)" section it writes into a Markdown file."""

from __future__ import annotations

import json
from pathlib import Path

from serve_app.bench.delegate_bench import SECTION, main, parse_args, save_section


def test_the_full_run_defaults() -> None:
    args = parse_args([])
    assert args.rounds == 5 and args.delegate_delay_s == 0.5 and args.modes == ["delegate", "duplex"]
    smoke = parse_args(["--smoke"])
    assert smoke.rounds == 1 and smoke.asks == 5 and smoke.modes == ["delegate"]


def test_a_section_is_replaced_in_place(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# Benchmarks\n\n## Before\n\nx\n\n{SECTION}\n\nold\n\n## After\n\ny\n")
    save_section(doc, f"{SECTION}\n\nnew\n")
    assert doc.read_text() == f"# Benchmarks\n\n## Before\n\nx\n\n{SECTION}\n\nnew\n\n## After\n\ny\n"
    save_section(tmp_path / "empty.md", f"{SECTION}\n\nnew\n")
    assert (tmp_path / "empty.md").read_text() == f"# Benchmarks\n\n{SECTION}\n\nnew\n"


def test_the_smoke_run_measures_a_tool_round_trip(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    main(["--smoke", "--delegate-delay-s", "0.2", "--out", str(tmp_path), "--doc", str(doc)])
    result = json.loads((tmp_path / "delegate_bench.json").read_text())
    assert result["command"].startswith("python -m serve_app.bench.delegate_bench --smoke")
    assert result["commit"] and result["machine"]["nproc"] >= 1
    (latency,) = result["latency"]
    assert latency["mode"] == "delegate" and latency["failed"] == 0, latency["rounds"]
    (row,) = latency["rounds"]
    assert row["answer_transcript"] == "It is sunny in Paris today."
    # Each leg holds the delegate's 200 ms, and server VAD ended the turn before the call came.
    assert 200 < row["turn_end_to_call_done_ms"] < 30_000
    assert 200 < row["output_to_first_audio_ms"] < 30_000
    assert 0 < row["turn_end_to_speech_stopped_ms"] < row["turn_end_to_call_done_ms"]
    assert row["turn_end_to_transcribed_ms"] < row["turn_end_to_call_done_ms"]
    assert latency["turn_end_to_call_done_ms"]["p50"] == row["turn_end_to_call_done_ms"]
    assert row["loop_cpu_ms_per_session_s"] > 0
    cost = result["ask_cost"]
    assert cost["asks"] == 5 and cost["cpu_ms_per_ask_p50"] > 0
    assert 0 < cost["session_core_us_p50"] < 1000 * cost["cpu_ms_per_ask_p50"]
    assert cost["events_per_ask"] >= 8  # the function-calling flow, response.created → response.done
    section = doc.read_text()
    assert section.startswith("# Benchmarks\n\n## Other\n\nkept\n\n" + SECTION)
    assert "200 ms" in section and f"`{result['commit']}`" in section and result["command"] in section
    assert (tmp_path / "delegate_bench.md").read_text() in section
