import json
from pathlib import Path

from serve_app.bench.engine_bench import main, parse_args


def test_parses_full_size_gpu_run() -> None:
    args = parse_args(["--device", "cuda", "--full-size", "--batch-sizes", "8", "1", "4", "--out", "/tmp/x"])
    assert args.full_size and args.device == "cuda" and args.batch_sizes == [1, 4, 8]
    assert args.out == Path("/tmp/x") and args.dtype == "auto"
    defaults = parse_args([])
    assert defaults.batch_sizes == [1, 2, 4, 8, 16, 32, 64] and not defaults.full_size
    assert defaults.out == Path("bench_out") and defaults.period_ms == 80


def test_small_run_writes_json_and_plot(tmp_path: Path) -> None:
    argv = [
        "--out",
        str(tmp_path),
        "--batch-sizes",
        "1",
        "2",
        "--ticks",
        "3",
        "--single-steps",
        "3",
        "--period-ms",
        "1e6",
    ]
    assert main(argv) == 0
    result = json.loads((tmp_path / "engine_bench.json").read_text())
    assert [row["batch"] for row in result["batched"]] == [1, 2]
    assert result["lock_per_model"]["sessions"] >= 1 and result["machine"]["torch_threads"] >= 1
    assert result["command"].startswith("python -m serve_app.bench.engine_bench --out")
    assert (tmp_path / "engine_bench.png").stat().st_size > 1000
