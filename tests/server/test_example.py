"""The README's SDK example is a file that runs: against the in-process server it streams a WAV, prints
Moshi's words, saves its audio and ends by itself."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

from serve_app.client.cli import write_pcm16
from tests.fixtures.audio import speech_like, to_pcm16
from tests.server.conftest import RunningServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "realtime_sdk.py"


def test_the_readme_shows_the_example_file_verbatim() -> None:
    assert EXAMPLE.read_text() in (ROOT / "README.md").read_text()


def test_the_example_converses_and_ends(local_server: RunningServer, tmp_path: Path) -> None:
    source, answer = tmp_path / "in.wav", tmp_path / "out.wav"
    write_pcm16(source, to_pcm16(speech_like(4.0, seed=21)))
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), str(source), str(answer), local_server.ws_base],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "saved" in done.stdout and "error" not in done.stderr
    with wave.open(str(answer)) as f:
        assert f.getframerate() == 24_000 and f.getnframes() > 0
