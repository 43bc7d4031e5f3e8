"""The command-line client against the in-process server: WAV in, Moshi's WAV and transcript out."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from serve_app.client.cli import main, status_label, write_pcm16
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
            # Room for the last answer to finish after the input (2 s, the default, is tight on a busy CPU).
            "--tail-s",
            "4",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "[completed]" in out
    with wave.open(str(answer), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (SAMPLE_RATE, 1, 2)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    assert pcm.size == 8 * SAMPLE_RATE + 4 * SAMPLE_RATE  # the input's timeline plus the 4 s tail, exactly
    assert np.abs(pcm).max() > 0
    summary = out.rstrip().splitlines()[-1]
    assert summary.startswith(("1 response", "2 response", "3 response")) and "wrote 12.00 s" in summary


def test_a_reply_cut_by_barge_in_says_so() -> None:
    barge_in = "cancelled: you spoke over Moshi (server VAD barge-in)"
    assert status_label("cancelled", "turn_detected") == barge_in
    assert status_label("cancelled", "client_cancelled") == "cancelled: this client cancelled it"
    assert status_label("incomplete", "content_filter") == "incomplete: content_filter"
    assert status_label("completed", None) == "completed"


def test_cli_says_in_words_when_no_server_listens(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from tests.fixtures.net import free_port

    source = tmp_path / "in.wav"
    write_pcm16(source, to_pcm16(speech_like(0.5, seed=1)))
    assert main(["--url", f"ws://127.0.0.1:{free_port()}/v1", "--input", str(source)]) == 3
    err = capsys.readouterr().err
    assert "cannot connect to ws://127.0.0.1:" in err and "make serve" in err and "Traceback" not in err


def test_cli_reports_an_unknown_model_without_a_traceback(
    local_server: RunningServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "in.wav"
    write_pcm16(source, to_pcm16(speech_like(0.5, seed=1)))
    code = main(["--url", local_server.ws_base, "--model", "no-such-model", "--input", str(source)])
    err = capsys.readouterr().err
    assert code == 1 and "model_not_found" in err and "Traceback" not in err


def test_cli_refuses_a_wav_it_cannot_stream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "8k.wav"
    with wave.open(str(source), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(bytes(1600))
    assert main(["--input", str(source)]) == 2
    assert "need 24000 Hz mono 16-bit PCM, got 8000 Hz" in capsys.readouterr().err
