"""G.711 against the ITU-T tables and the G.191 reference coder; PCM16 and base64 framing."""

from __future__ import annotations

import base64
import warnings

import numpy as np
import pytest

from serve_app.protocol.codecs import (
    AudioError,
    AudioFormat,
    alaw_decode,
    alaw_encode,
    decode_base64,
    float_to_pcm16,
    pcm16_from_bytes,
    pcm16_to_bytes,
    pcm16_to_float,
    ulaw_decode,
    ulaw_encode,
)

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
ALL_CODES = np.arange(256, dtype=np.uint8)

# (16-bit linear input, code) from the G.711 tables (Table 2a μ-law, Table 1a A-law), with the 14-bit
# (μ) / 13-bit (A) table values scaled to 16 bits the way the G.191 reference coder does it.
ULAW_ENCODE = [
    (0, 0xFF),  # zero: positive, segment 0, step 0 (all bits inverted)
    (-1, 0x7F),  # negative zero (one's complement of -1 is 0)
    (3, 0xFF),  # still inside the first interval
    (4, 0xFE),  # next step (14-bit 1: decision value 1)
    (123, 0xF0),  # 14-bit 30: top of segment 0
    (124, 0xEF),  # 14-bit 31: decision value 31 starts segment 1
    (-124, 0x70),  # magnitude 123 (one's complement): top of segment 0, negative
    (-125, 0x6F),
    (379, 0xE0),  # 14-bit 94: top step of segment 1 (decoder output 93)
    (380, 0xDF),  # 14-bit 95: decision value 95 starts segment 2 (decoder output 99)
    (16383, 0x8F),  # 14-bit 4095 lies in segment 7
    (32124, 0x80),  # largest decoder output: top code
    (32767, 0x80),  # clips to the top code
    (-32768, 0x00),
]
ULAW_DECODE = [
    (0xFF, 0),
    (0x7F, 0),
    (0xFE, 8),
    (0x7E, -8),
    (0xF0, 120),
    (0xEF, 132),
    (0xE0, 372),
    (0xDF, 396),
    (0x80, 32124),
    (0x00, -32124),
]
ALAW_ENCODE = [
    (0, 0xD5),  # positive zero: 0x80 with even bits inverted
    (-1, 0x55),
    (15, 0xD5),
    (16, 0xD4),  # 13-bit 2: second step of segment 0 (step 2 in 13-bit units)
    (255, 0xDA),  # 13-bit 31: top of segment 0
    (256, 0xC5),  # 13-bit 32: segment 1
    (511, 0xCA),  # 13-bit 63: top of segment 1
    (512, 0xF5),  # 13-bit 64: segment 2
    (-257, 0x45),  # magnitude 256 negative
    (32767, 0xAA),  # top code, positive
    (-32768, 0x2A),  # top code, negative
]
ALAW_DECODE = [
    (0xD5, 8),
    (0x55, -8),
    (0xD4, 24),
    (0xDA, 248),
    (0xC5, 264),
    (0xF5, 528),
    (0xAA, 32256),
    (0x2A, -32256),
]


@pytest.mark.parametrize(("sample", "code"), ULAW_ENCODE)
def test_ulaw_encode_reference_values(sample: int, code: int) -> None:
    assert ulaw_encode(np.array([sample], np.int16))[0] == code


@pytest.mark.parametrize(("code", "sample"), ULAW_DECODE)
def test_ulaw_decode_reference_values(code: int, sample: int) -> None:
    assert ulaw_decode(np.array([code], np.uint8))[0] == sample


@pytest.mark.parametrize(("sample", "code"), ALAW_ENCODE)
def test_alaw_encode_reference_values(sample: int, code: int) -> None:
    assert alaw_encode(np.array([sample], np.int16))[0] == code


@pytest.mark.parametrize(("code", "sample"), ALAW_DECODE)
def test_alaw_decode_reference_values(code: int, sample: int) -> None:
    assert alaw_decode(np.array([code], np.uint8))[0] == sample


def _stl_ulaw_compress(x: int) -> int:
    """G.191 STL g711.c ulaw_compress, transcribed one sample at a time."""
    absno = ((~x) >> 2) + 33 if x < 0 else (x >> 2) + 33
    absno = min(absno, 0x1FFF)
    i, segno = absno >> 6, 1
    while i:
        segno, i = segno + 1, i >> 1
    code = ((8 - segno) << 4) | (15 - ((absno >> segno) & 0xF))
    return code | 0x80 if x >= 0 else code


def _stl_alaw_compress(x: int) -> int:
    ix = (~x) >> 4 if x < 0 else x >> 4
    if ix > 15:
        iexp = 1
        while ix > 16 + 15:
            ix >>= 1
            iexp += 1
        ix = ix - 16 + (iexp << 4)
    if x >= 0:
        ix |= 0x80
    return ix ^ 0x55


def test_encoders_match_the_g191_reference_for_every_16bit_sample() -> None:
    samples = ALL_INT16.astype(int)
    assert ulaw_encode(ALL_INT16).tolist() == [_stl_ulaw_compress(x) for x in samples]
    assert alaw_encode(ALL_INT16).tolist() == [_stl_alaw_compress(x) for x in samples]


def test_every_code_survives_decode_then_encode() -> None:
    ulaw = ulaw_encode(ulaw_decode(ALL_CODES))
    expected = ALL_CODES.copy()
    expected[0x7F] = 0xFF  # negative zero decodes to 0, which encodes as positive zero
    np.testing.assert_array_equal(ulaw, expected)
    np.testing.assert_array_equal(alaw_encode(alaw_decode(ALL_CODES)), ALL_CODES)


def test_sign_symmetry_of_the_reference_coder() -> None:
    x = ALL_INT16[ALL_INT16 >= 0]
    mirrored = (-1 - x.astype(np.int32)).astype(np.int16)  # one's complement
    np.testing.assert_array_equal(ulaw_encode(mirrored), ulaw_encode(x) & 0x7F)
    np.testing.assert_array_equal(alaw_encode(mirrored), alaw_encode(x) ^ 0x80)


def test_decoders_are_monotonic_and_quantisation_error_is_bounded() -> None:
    for encode, decode, max_step in ((ulaw_encode, ulaw_decode, 1024), (alaw_encode, alaw_decode, 1024)):
        decoded = decode(encode(ALL_INT16)).astype(np.int32)
        assert np.all(np.diff(decoded) >= 0)
        error = np.abs(decoded - ALL_INT16.astype(np.int32))
        assert error.max() <= max_step  # half the largest step (2048) at full scale, plus clipping slack
        assert error[np.abs(ALL_INT16.astype(np.int32)) < 256].max() <= 8  # fine steps near zero


def test_agrees_with_audioop_where_it_follows_the_standard() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # gone in 3.13; an independent C implementation in 3.11
    raw = ALL_INT16.astype("<i2").tobytes()
    assert audioop.lin2alaw(raw, 2) == alaw_encode(ALL_INT16).tobytes()
    assert audioop.alaw2lin(ALL_CODES.tobytes(), 2) == alaw_decode(ALL_CODES).astype("<i2").tobytes()
    assert audioop.ulaw2lin(ALL_CODES.tobytes(), 2) == ulaw_decode(ALL_CODES).astype("<i2").tobytes()
    # audioop's μ-law encoder rounds negatives by arithmetic shift (Sun's g711.c), not one's
    # complement as G.191 does; for non-negative input the two agree exactly.
    positive = ALL_INT16[ALL_INT16 >= 0]
    assert audioop.lin2ulaw(positive.astype("<i2").tobytes(), 2) == ulaw_encode(positive).tobytes()


def test_pcm16_round_trip_is_exact() -> None:
    assert np.array_equal(float_to_pcm16(pcm16_to_float(ALL_INT16)), ALL_INT16)
    assert np.array_equal(pcm16_from_bytes(pcm16_to_bytes(ALL_INT16)), ALL_INT16)
    assert pcm16_to_bytes(np.array([1, -2], np.int16)) == b"\x01\x00\xfe\xff"  # little-endian


def test_float_to_pcm16_clips_and_rounds() -> None:
    pcm = np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0, 1 / 65536], dtype=np.float32)
    assert float_to_pcm16(pcm).tolist() == [-32768, -32768, 0, 16384, 32767, 32767, 0]


def test_pcm16_rejects_odd_byte_counts() -> None:
    with pytest.raises(AudioError, match="2-byte samples, got 3 bytes"):
        pcm16_from_bytes(b"abc")


@pytest.mark.parametrize("text", ["***", "AAA", "AA=A", "data:audio/wav;base64,AAAA"])
def test_base64_must_be_valid(text: str) -> None:
    with pytest.raises(AudioError, match="not valid base64"):
        decode_base64(text)


def test_base64_round_trip() -> None:
    assert decode_base64(base64.b64encode(b"\x00\x01\xff").decode()) == b"\x00\x01\xff"
    assert decode_base64("") == b""


def test_formats_know_their_wire_rates() -> None:
    assert AudioFormat.PCM16.sample_rate == 24000 and AudioFormat.PCM16.bytes_per_sample == 2
    assert AudioFormat.G711_ULAW.sample_rate == AudioFormat.G711_ALAW.sample_rate == 8000
    assert AudioFormat("g711_alaw").bytes_per_sample == 1


@pytest.mark.parametrize("fmt", list(AudioFormat))
@pytest.mark.parametrize("size", [0, 1, 2, 3, 479, 480, 4801])
def test_the_base64_duration_is_the_decoded_audio_length(fmt: AudioFormat, size: int) -> None:
    text = base64.b64encode(bytes(size)).decode()
    expected = size / fmt.bytes_per_sample * 1000 / fmt.sample_rate
    assert fmt.base64_duration_ms(text) == pytest.approx(expected)
