"""The 24 kHz <-> 8 kHz converters: exact lengths, chunking-invariance, pass-band and stop-band."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from serve_app.protocol.resample import TAPS, Downsampler, To16k, Upsampler


def tone(freq: float, rate: int, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x.astype(np.float64)))))


def test_lengths_are_exact_across_odd_chunks() -> None:
    down, up = Downsampler(), Upsampler()
    produced = 0
    for size in (1, 2, 5, 1920, 7, 3):
        produced += len(down.process(np.zeros(size, np.float32)))
    assert produced == (1 + 2 + 5 + 1920 + 7 + 3) // 3
    assert len(up.process(np.zeros(641, np.float32))) == 1923


@pytest.mark.parametrize("chunk", [1, 7, 640, 1920])
def test_chunking_does_not_change_the_output(chunk: int) -> None:
    signal = tone(1000, 24000) + tone(300, 24000)
    whole = Downsampler().process(signal)
    streaming = Downsampler()
    pieces = np.concatenate([streaming.process(signal[i : i + chunk]) for i in range(0, len(signal), chunk)])
    np.testing.assert_allclose(pieces, whole, atol=1e-6)
    low = tone(1000, 8000)
    whole_up = Upsampler().process(low)
    streaming_up = Upsampler()
    pieces_up = np.concatenate([streaming_up.process(low[i : i + chunk]) for i in range(0, len(low), chunk)])
    np.testing.assert_allclose(pieces_up, whole_up, atol=1e-6)


@pytest.mark.parametrize("freq", [300, 1000, 2500])
def test_speech_band_passes_at_unity_gain(freq: float) -> None:
    settle = TAPS  # skip the filter's start-up
    down = Downsampler().process(tone(freq, 24000))
    assert rms(down[settle:]) == pytest.approx(rms(tone(freq, 8000)), rel=0.06)
    up = Upsampler().process(tone(freq, 8000))
    assert rms(up[3 * settle :]) == pytest.approx(rms(tone(freq, 24000)), rel=0.06)


def test_above_nyquist_of_8khz_is_rejected_before_decimation() -> None:
    aliased = Downsampler().process(tone(6000, 24000))  # would fold to 2 kHz without the filter
    assert rms(aliased[TAPS:]) < rms(tone(6000, 24000)) * 10 ** (-50 / 20)


def test_upsampling_images_are_rejected() -> None:
    up = Upsampler().process(tone(1000, 8000))[3 * TAPS :]
    spectrum = np.abs(np.fft.rfft(up * np.hanning(len(up))))
    freqs = np.fft.rfftfreq(len(up), 1 / 24000)
    wanted = spectrum[np.abs(freqs - 1000) < 50].max()
    images = spectrum[np.abs(freqs - 7000) < 50].max()  # 8 kHz - 1 kHz
    assert 20 * np.log10(images / wanted) < -50


def test_round_trip_through_8khz_keeps_a_speech_band_tone() -> None:
    signal = tone(800, 24000)
    back = Upsampler().process(Downsampler().process(signal))
    delay = TAPS - 1  # two filters of (TAPS-1)/2 samples each at 24 kHz
    error = back[delay + 3 * TAPS : len(signal)] - signal[3 * TAPS : len(signal) - delay]
    assert rms(error) < 0.02 * rms(signal)


def test_to_16k_gives_two_thirds_of_the_samples_whatever_the_chunking() -> None:
    rng = np.random.default_rng(3)
    pcm = rng.standard_normal(24_000).astype(np.float32)
    whole = To16k().process(pcm)
    assert len(whole) == 16_000
    pieces = To16k()
    cuts = [0, 1, 7, 480, 1921, 5000, 24_000]
    chunked = np.concatenate([pieces.process(pcm[a:b]) for a, b in itertools.pairwise(cuts)])
    np.testing.assert_allclose(chunked, whole, atol=1e-6)


def test_to_16k_keeps_speech_band_tones_and_removes_what_16k_cannot_hold() -> None:
    t = np.arange(48_000) / 24_000
    for hz, kept in ((300.0, True), (3000.0, True), (10_000.0, False)):
        out = To16k().process(np.sin(2 * np.pi * hz * t).astype(np.float32))[2000:]
        rms = float(np.sqrt(np.mean(out**2)))
        assert (abs(rms - 1 / np.sqrt(2)) < 0.02) if kept else rms < 0.01, (hz, rms)
