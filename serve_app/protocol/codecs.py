"""Wire audio codecs: base64 PCM16 LE and ITU-T G.711 μ-law / A-law, in numpy (audioop left in 3.13).

The G.711 coders are vectorised transcriptions of the ITU-T G.191 Software Tools Library reference
(`g711.c`: `ulaw_compress`/`ulaw_expand`, `alaw_compress`/`alaw_expand`): input is 16-bit linear PCM,
taken as 14-bit (μ-law) or 13-bit (A-law) left-justified, negative samples by one's complement, so
`encode(x)` and `encode(-1 - x)` differ only in the sign bit. Decoders return the middle of each
quantisation interval, as in the G.711 tables.
"""

from __future__ import annotations

import base64
import binascii
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from serve_app.constants import SAMPLE_RATE
from serve_app.pcm import float_to_pcm16 as float_to_pcm16  # the wire's PCM16, re-exported
from serve_app.pcm import pcm16_to_float as pcm16_to_float

G711_SAMPLE_RATE = 8000
"""G.711 is defined at 8 kHz; the Realtime API sends it at that rate."""


class AudioFormat(StrEnum):
    """Named as beta names them; GA's {type: audio/pcm | audio/pcmu | audio/pcma} map onto these."""

    PCM16 = "pcm16"
    G711_ULAW = "g711_ulaw"
    G711_ALAW = "g711_alaw"

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE if self is AudioFormat.PCM16 else G711_SAMPLE_RATE

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self is AudioFormat.PCM16 else 1

    def base64_duration_ms(self, text: str) -> float:
        """Audio length of a base64 payload of this format, from its size alone (before decoding)."""
        size = len(text) * 3 // 4 - text.endswith("=") - text.endswith("==")
        return max(0, size) / self.bytes_per_sample * 1000 / self.sample_rate


class AudioError(ValueError):
    """Client audio that cannot be decoded; the message is meant for the client."""


def decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AudioError(f"the audio is not valid base64 ({exc})") from None


def encode_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def pcm16_from_bytes(data: bytes) -> npt.NDArray[np.int16]:
    if len(data) % 2:
        raise AudioError(f"PCM16 audio must be a whole number of 2-byte samples, got {len(data)} bytes")
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def pcm16_to_bytes(samples: npt.NDArray[np.int16]) -> bytes:
    return np.asarray(samples, dtype="<i2").tobytes()


# Segment number of a biased μ-law magnitude, indexed by magnitude >> 6 (0..127): 1 + bit length.
_ULAW_SEGMENT = np.array([1 + int(i).bit_length() for i in range(128)], dtype=np.int32)


def ulaw_encode(samples: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    x = np.asarray(samples, dtype=np.int32)
    magnitude = np.where(x < 0, ~x, x) >> 2  # 14-bit, one's complement for negatives
    biased = np.minimum(magnitude + 33, 0x1FFF)  # 33: the μ-law bias; clip to the top segment
    segment = _ULAW_SEGMENT[biased >> 6]
    mantissa = 15 - ((biased >> segment) & 0xF)
    code = ((8 - segment) << 4) | mantissa
    signed: npt.NDArray[np.uint8] = np.where(x >= 0, code | 0x80, code).astype(
        np.uint8
    )  # sign bit 1: positive
    return signed


def ulaw_decode(codes: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    c = np.asarray(codes, dtype=np.int32)
    inverted = ~c & 0xFF
    exponent = (inverted >> 4) & 0x7
    mantissa = inverted & 0xF
    step = 4 << (exponent + 1)
    magnitude = (0x80 << exponent) + step * mantissa + step // 2 - 4 * 33
    return np.where(c < 0x80, -magnitude, magnitude).astype(np.int16)


def alaw_encode(samples: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    x = np.asarray(samples, dtype=np.int32)
    magnitude = np.where(x < 0, ~x, x) >> 4  # 0..2047
    # Exponent = bit length - 4 above the linear first segment (magnitude <= 15).
    exponent = np.maximum(_bit_length(magnitude) - 4, 1)
    segmented = (exponent << 4) + (magnitude >> (exponent - 1)) - 16
    code = np.where(magnitude > 15, segmented, magnitude)
    code = np.where(x >= 0, code | 0x80, code)
    toggled: npt.NDArray[np.uint8] = (code ^ 0x55).astype(np.uint8)  # G.711 inverts the even bits
    return toggled


def alaw_decode(codes: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    c = np.asarray(codes, dtype=np.int32)
    toggled = (c ^ 0x55) & 0x7F
    exponent = toggled >> 4
    mantissa = toggled & 0xF
    mantissa = np.where(exponent > 0, mantissa + 16, mantissa)
    magnitude = (mantissa << 4) + 8
    magnitude = np.where(exponent > 1, magnitude << np.maximum(exponent - 1, 0), magnitude)
    return np.where(c > 127, magnitude, -magnitude).astype(np.int16)


def _bit_length(values: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    lengths = np.zeros(values.shape, dtype=np.int32)
    remaining = values.copy()
    while np.any(remaining):
        nonzero = remaining > 0
        lengths += nonzero
        remaining >>= 1
    return lengths
