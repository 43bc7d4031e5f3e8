import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from serve_app.engine.batch import BatchedEngine
from serve_app.engine.loader import LoadedModel, load_model
from serve_app.engine.spec import ModelSpec, SamplingParams
from serve_app.engine.tiny import (
    LM_NAME,
    MIMI_CONFIG_NAME,
    MIMI_NAME,
    TOKENIZER_NAME,
    build_tiny_checkpoint,
    ensure_tiny_checkpoint,
)
from tests.engine.support import TINY_SEED, noise
from tests.fixtures.audio import speech_like


def _tensors_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_has_the_real_layout(tiny_dir: Path) -> None:
    config = json.loads((tiny_dir / "config.json").read_text())
    assert {config[k] for k in ("moshi_name", "mimi_name", "tokenizer_name", "mimi_config_name")} == {
        LM_NAME,
        MIMI_NAME,
        TOKENIZER_NAME,
        MIMI_CONFIG_NAME,
    }
    assert config["model_type"] == "moshi" and "lm_gen_config" in config
    # real codebook structure at toy width
    assert (config["n_q"], config["dep_q"], config["card"], config["dim"], config["num_layers"]) == (
        16,
        8,
        2048,
        128,
        2,
    )
    assert config["delays"] == [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]
    for name in (LM_NAME, MIMI_NAME, MIMI_CONFIG_NAME, TOKENIZER_NAME):
        assert (tiny_dir / name).stat().st_size > 0


def test_same_seed_same_checkpoint_other_seed_differs(tiny_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_checkpoint(tmp_path / "again", TINY_SEED)
    other = build_tiny_checkpoint(tmp_path / "other", TINY_SEED + 1)
    for name in (LM_NAME, MIMI_NAME):
        assert _tensors_equal(load_file(tiny_dir / name), load_file(again / name))
        assert not _tensors_equal(load_file(tiny_dir / name), load_file(other / name))
    assert (tiny_dir / TOKENIZER_NAME).read_bytes() == (again / TOKENIZER_NAME).read_bytes()
    assert (tiny_dir / "config.json").read_text() != (other / "config.json").read_text()  # seed recorded


def test_mimi_codebooks_are_random(tiny_model: LoadedModel) -> None:
    # A fresh Mimi has all-zero codebooks and encodes everything to code 0.
    with torch.no_grad():
        codes = tiny_model.mimi.encode(torch.from_numpy(noise(4, seed=3))[None, None])
    assert codes.shape == (1, 8, 4) and len(torch.unique(codes)) > 8


def test_ensure_builds_once_and_reuses(tmp_path: Path) -> None:
    first = ensure_tiny_checkpoint(5, cache_dir=tmp_path)
    stamp = (first / LM_NAME).stat().st_mtime_ns
    assert ensure_tiny_checkpoint(5, cache_dir=tmp_path) == first
    assert (first / LM_NAME).stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp dirs left behind


def test_ensure_default_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOSHI_REALTIME_CACHE", str(tmp_path))
    assert ensure_tiny_checkpoint(6).parent == tmp_path / "tiny"


def test_ensure_is_safe_across_processes(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from serve_app.engine.tiny import ensure_tiny_checkpoint; "
        "print(ensure_tiny_checkpoint(7, cache_dir=Path(sys.argv[1])))"
    )
    env = {**os.environ, "NO_TORCH_COMPILE": "1", "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, env=env)
        for _ in range(2)
    ]
    outs = {proc.communicate(timeout=120)[0].decode().strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert len(outs) == 1
    final = Path(outs.pop())
    assert [p.name for p in tmp_path.iterdir()] == [final.name]
    load_model(ModelSpec(local_dir=final))  # complete and loadable


def _runs(flags: list[bool]) -> list[tuple[bool, int]]:
    runs: list[tuple[bool, int]] = []
    for flag in flags:
        if runs and runs[-1][0] == flag:
            runs[-1] = (flag, runs[-1][1] + 1)
        else:
            runs.append((flag, 1))
    return runs


def test_speaks_in_bursts_with_default_sampling(tiny_model: LoadedModel) -> None:
    """The session layer makes one response per speaking stretch: the tiny LM must alternate in runs."""
    frames = 110
    inputs = [speech_like(frames * 0.08, seed=1), noise(frames, seed=2), speech_like(frames * 0.08, seed=3)]
    with BatchedEngine(tiny_model, slots=len(inputs), sampling=SamplingParams()) as engine:
        engine.warmup()
        slots = [engine.open_slot() for _ in inputs]
        for slot, pcm in zip(slots, inputs, strict=True):
            engine.push(slot, pcm)
        speaking: dict[int, list[bool]] = {slot: [] for slot in slots}
        texts: list[str] = []
        for _ in range(frames):
            for slot, frame in engine.tick().items():
                speaking[slot].append(frame.speaking)
                assert frame.speaking == (frame.text is not None)
                texts.extend([frame.text] if frame.text else [])
    runs = {slot: _runs(flags) for slot, flags in speaking.items()}
    long_speech = [n for slot in slots for flag, n in runs[slot] if flag and n >= 8]
    long_silence = [n for slot in slots for flag, n in runs[slot] if not flag and n >= 8]
    # Several utterances separated by real pauses, in every session.
    assert len(long_speech) >= 5 and len(long_silence) >= 4, runs
    for slot in slots:
        assert sum(1 for flag, n in runs[slot] if flag and n >= 8) >= 1, runs[slot]
        assert 0.15 < np.mean(speaking[slot]) < 0.9, runs[slot]
    assert any(text.startswith(" ") for text in texts)  # word boundaries come through as spaces


def test_the_checkpoint_does_not_depend_on_the_thread_count(tiny_dir: Path, tmp_path: Path) -> None:
    """A 1-thread replica and a many-thread test process must build the same embedded default."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        other = build_tiny_checkpoint(tmp_path / "threads", TINY_SEED)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    assert _tensors_equal(load_file(tiny_dir / LM_NAME), load_file(other / LM_NAME))
