"""The speech every session streams: a 24 kHz mono PCM16 WAV cut into 80 ms append events, encoded once."""

from __future__ import annotations

import json
from pathlib import Path

from serve_app.client.cli import read_pcm16
from serve_app.constants import BYTES_PER_SAMPLE_PCM16, FRAME_SAMPLES
from serve_app.protocol.codecs import encode_base64

FRAME_BYTES = FRAME_SAMPLES * BYTES_PER_SAMPLE_PCM16
FIXTURE = Path("tests") / "fixtures" / "speech" / "sentences.wav"
DEFAULT_AUDIO = Path(__file__).resolve().parents[2] / FIXTURE
"""The committed festival fixture (four sentences with pauses), found from a checkout of the repository
(an installed wheel has no tests/: then ./tests/... if run from a checkout, else `--audio` is needed)."""


def default_audio() -> Path:
    return DEFAULT_AUDIO if DEFAULT_AUDIO.is_file() or not FIXTURE.is_file() else FIXTURE.resolve()


class AudioError(ValueError):
    pass


def append_events(path: Path | None = None) -> list[str]:
    """One `input_audio_buffer.append` JSON text per 80 ms of the WAV (the last padded with silence, so a
    looping session stays on the 80 ms grid). Sessions share these strings: the client's cost per send
    is the send alone."""
    source = path or default_audio()
    if not source.is_file():
        hint = " (the default fixture ships with the repository; pass --audio PATH)" if path is None else ""
        raise AudioError(f"{source}: no such file{hint}")
    pcm = read_pcm16(source)  # raises WavFormatError (a ValueError) with what it found
    if not pcm:
        raise AudioError(f"{source}: no audio frames")
    pcm += bytes(-len(pcm) % FRAME_BYTES)
    return [
        json.dumps({"type": "input_audio_buffer.append", "audio": encode_base64(pcm[i : i + FRAME_BYTES])})
        for i in range(0, len(pcm), FRAME_BYTES)
    ]
