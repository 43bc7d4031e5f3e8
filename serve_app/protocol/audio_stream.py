"""One direction of a session's wire audio: base64 in the session's format ↔ 24 kHz float32 PCM.

Stateful because G.711 needs resampling across chunk boundaries; make a new one when the format changes.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from serve_app.protocol.codecs import (
    AudioError,
    AudioFormat,
    alaw_decode,
    alaw_encode,
    decode_base64,
    encode_base64,
    float_to_pcm16,
    pcm16_from_bytes,
    pcm16_to_bytes,
    pcm16_to_float,
    ulaw_decode,
    ulaw_encode,
)
from serve_app.protocol.resample import Downsampler, Upsampler


class AudioDecoder:
    """Client audio (`input_audio_buffer.append.audio`) → 24 kHz mono float32 for Moshi."""

    def __init__(self, audio_format: AudioFormat) -> None:
        self.format = audio_format
        self._upsampler = Upsampler()

    def duration_ms(self, audio_b64: str) -> float:
        """The payload's audio length, judged before any decoding work."""
        return self.format.base64_duration_ms(audio_b64)

    def decode(self, audio_b64: str) -> npt.NDArray[np.float32]:
        data = decode_base64(audio_b64)
        if self.format is AudioFormat.PCM16:
            return pcm16_to_float(pcm16_from_bytes(data))
        codes = np.frombuffer(data, dtype=np.uint8)
        linear = ulaw_decode(codes) if self.format is AudioFormat.G711_ULAW else alaw_decode(codes)
        return self._upsampler.process(pcm16_to_float(linear))


class AudioEncoder:
    """Moshi's 24 kHz float32 → base64 in the session's output format (one delta per call)."""

    def __init__(self, audio_format: AudioFormat) -> None:
        self.format = audio_format
        self._downsampler = Downsampler()

    def encode(self, pcm: npt.NDArray[np.float32]) -> str:
        if self.format is AudioFormat.PCM16:
            return encode_base64(pcm16_to_bytes(float_to_pcm16(pcm)))
        linear = float_to_pcm16(self._downsampler.process(pcm))
        codes = ulaw_encode(linear) if self.format is AudioFormat.G711_ULAW else alaw_encode(linear)
        return encode_base64(codes.tobytes())


__all__ = ["AudioDecoder", "AudioEncoder", "AudioError"]
