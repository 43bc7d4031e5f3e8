"""The GPU check cannot rot: `--tiny` runs the whole program on CPU and writes every field a GPU run writes;
its imports stay free of Ray and the server (the GPU hosts have torch and moshi only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from serve_app.bench import gpu_check

ROOT = Path(__file__).resolve().parents[2]

# Small on purpose (2 cores, shared): every section runs, each as briefly as still measures something.
TINY_ARGS = [
    "--tiny",
    "--batch-sizes", "1", "2",
    "--max-batch", "2",
    "--eager-batches", "1",
    "--ticks", "4",
    "--parity-steps", "20",
    "--history-s", "2",
    "--quantize", "int8",
    "--quantized-batch-sizes", "2",
    "--threads", "1",
    "--budget-s", "300",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("gpu_check")
    assert gpu_check.main([*TINY_ARGS, "--out", str(out)]) == 0
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_tiny_run_writes_every_field_with_measurements(tiny_run: tuple[dict[str, Any], str]) -> None:
    result, _ = tiny_run
    assert set(result) == set(gpu_check.FIELDS)
    missing = [key for key in gpu_check.FIELDS if result[key] is None and key != "parity_float32"]
    assert missing == []
    assert result["skipped_for_time"] == [] and result["errors"] == {}
    assert result["parity_float32"] is None  # only run where the model's dtype was not bit-identical
    rows = result["batched"]
    assert [row["batch"] for row in rows] == [1, 2]
    assert all(row["p99_ms"] >= row["p50_ms"] > 0 and row["ticks"] == 4 for row in rows)
    assert result["sessions_within_frame"] in (0, 1, 2)
    eager = result["eager"]
    assert [row["batch"] for row in eager] == [1] and eager[0]["cuda_graphs"] is False


def test_tiny_run_measures_the_slot_memory_sizing_predicts(tiny_run: tuple[dict[str, Any], str]) -> None:
    memory = tiny_run[0]["memory"]
    # The streaming state allocated for one more slot is what sizing.py computes (+ offsets and masks).
    assert memory["state_bytes_per_slot"] > 0
    assert abs(memory["state_vs_estimate"] - 1) < 0.01
    assert memory["cuda_peak_bytes_per_slot"] is None  # CPU: no allocator statistics
    assert memory["auto_slots"] >= 1 and memory["slots_on_24gb_card"] > 1000  # a tiny slot is 6.7 MB


def test_tiny_run_parity_rebuild_and_int8(tiny_run: tuple[dict[str, Any], str]) -> None:
    result, table = tiny_run
    parity = result["parity"]
    # float32 on CPU: the batched engine is bit-identical to the single-stream loop (test_batch.py too).
    assert parity["identical_token_fraction"] == 1.0 and parity["identical_step_fraction"] == 1.0
    assert parity["steps"] >= 20 and set(parity["sessions"]) == {
        "throughout",
        "joins at 10, pauses 10 ticks",
        "leaves early",
        "reuses the freed slot",
    }
    (rebuild,) = result["rebuild"]
    assert rebuild["window_s"] == 2.0 and rebuild["lm_steps"] > 0 and rebuild["wall_ms"] > 0
    (int8,) = result["quantized"]
    assert int8["mode"] == "int8" and int8["linears"] > 0 and int8["lm_bytes_after"] < int8["lm_bytes_before"]
    assert [row["batch"] for row in int8["batched"]] == [2] and int8["batched"][0]["p50_ms"] > 0
    for heading in (
        "| B | tick p50 (ms)",
        "| per slot, sizing.py estimate",
        "Parity (float32",
        "Quantized int8",
    ):
        assert heading in table


def test_a_section_that_runs_out_of_time_is_recorded_not_lost(tmp_path: Path) -> None:
    assert gpu_check.main([*TINY_ARGS[:-1], "0.5", "--parity-steps", "0", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(result) == set(gpu_check.FIELDS)
    assert "batched" in result["skipped_for_time"] and "quantized" in result["skipped_for_time"]
    assert result["model"]["lm_params"] > 0  # what was done before the budget ran out is written


def test_the_check_imports_no_ray_and_no_server_packages() -> None:
    blocked = ["ray", "starlette", "fastapi", "openai", "uvicorn", "aiohttp", "websockets", "matplotlib"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None  # importing any of them now raises\n"
        "import serve_app.bench.gpu_check\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
