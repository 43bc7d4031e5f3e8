"""Session-facing audio directions: base64 in the session's format <-> 24 kHz float32."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from serve_app.protocol.audio_stream import AudioDecoder, AudioEncoder
from serve_app.protocol.codecs import AudioError, AudioFormat


def test_pcm16_decode_and_encode_are_inverse() -> None:
    samples = np.array([0, 1, -1, 32767, -32768, 1234], dtype="<i2")
    pcm = AudioDecoder(AudioFormat.PCM16).decode(base64.b64encode(samples.tobytes()).decode())
    assert pcm.dtype == np.float32 and pcm.tolist()[3] == pytest.approx(32767 / 32768)
    assert base64.b64decode(AudioEncoder(AudioFormat.PCM16).encode(pcm)) == samples.tobytes()


@pytest.mark.parametrize("fmt", [AudioFormat.G711_ULAW, AudioFormat.G711_ALAW])
def test_g711_runs_at_8khz_on_the_wire(fmt: AudioFormat) -> None:
    t = np.arange(24000) / 24000
    speech_band = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    encoder = AudioEncoder(fmt)
    wire = b"".join(
        base64.b64decode(encoder.encode(speech_band[i : i + 1920])) for i in range(0, 24000, 1920)
    )
    assert len(wire) == 8000  # one byte per 8 kHz sample
    decoder = AudioDecoder(fmt)
    back = np.concatenate(
        [decoder.decode(base64.b64encode(wire[i : i + 160]).decode()) for i in range(0, 8000, 160)]
    )
    assert len(back) == 24000
    delay = 96  # two 97-tap filters
    error = back[delay + 2000 : 22000 + delay] - speech_band[2000:22000]
    snr_db = 10 * np.log10(np.mean(speech_band[2000:22000] ** 2) / np.mean(error**2))
    assert snr_db > 25  # G.711 is ~38 dB for a loud tone; the filters and 8-bit law cost a little


def test_decoder_errors_are_audio_errors() -> None:
    with pytest.raises(AudioError, match="base64"):
        AudioDecoder(AudioFormat.G711_ULAW).decode("!!")
    with pytest.raises(AudioError, match="2-byte"):
        AudioDecoder(AudioFormat.PCM16).decode(base64.b64encode(b"x").decode())
    assert len(AudioDecoder(AudioFormat.G711_ALAW).decode(base64.b64encode(b"x").decode())) == 3
