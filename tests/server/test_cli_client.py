"""The command-line client against the in-process server: WAV in, Moshi's WAV and transcript out."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from serve_app.client.cli import main, write_pcm16
from serve_app.constants import SAMPLE_RATE
from tests.fixtures.audio import speech_like, to_pcm16
from tests.server.conftest import RunningServer


def test_cli_streams_a_wav_and_saves_moshis_audio(
    local_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, answer = tmp_path / "in.wav", tmp_path / "out.wav"
    write_pcm16(source, to_pcm16(speech_like(8.0, seed=11)))
    code = main(
        [
            "--url",
            local_server.ws_base,
            "--model",
            "moshi-sft",
            "--input",
            str(source),
            "--output",
            str(answer),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "[completed]" in out
    with wave.open(str(answer), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (SAMPLE_RATE, 1, 2)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    assert pcm.size > SAMPLE_RATE // 2 and np.abs(pcm).max() > 0


def test_cli_refuses_a_wav_it_cannot_stream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "8k.wav"
    with wave.open(str(source), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(bytes(1600))
    assert main(["--input", str(source)]) == 2
    assert "need 24000 Hz mono 16-bit PCM, got 8000 Hz" in capsys.readouterr().err
