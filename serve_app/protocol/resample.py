"""Streaming sample-rate conversion: 3:1 between 24 kHz (Mimi, PCM16 wire) and 8 kHz (G.711 wire), and
3:2 from 24 kHz to 16 kHz (the rate Silero VAD and most recognisers take).

One linear-phase FIR low-pass (windowed sinc, 97 taps, Kaiser β=7, cut-off 3.4 kHz: the telephone
band G.711 carries; ≈70 dB stop-band from ≈4 kHz) serves both directions: interpolation (zero-stuff by
3, filter, gain 3) and decimation (filter, keep every 3rd sample). Both are causal and keep the last
taps-1 input samples between calls, so audio cut into any chunk sizes comes out exactly as if it were
converted in one piece. The price is a fixed group delay of 48 samples at 24 kHz (2 ms). The 3:2
converter works the same way at 48 kHz (zero-stuff by 2, filter below 7 kHz, keep every 3rd): 1 ms of delay.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FACTOR = 3
TAPS = 97
CUTOFF_HZ = 3400.0
HIGH_RATE = 24_000
KAISER_BETA = 7.0


def _design_lowpass(
    taps: int = TAPS, cutoff_hz: float = CUTOFF_HZ, rate: int = HIGH_RATE
) -> npt.NDArray[np.float64]:
    n = np.arange(taps) - (taps - 1) / 2
    cutoff = cutoff_hz / rate  # cycles per sample at the filter's rate
    window = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, KAISER_BETA)
    normalised: npt.NDArray[np.float64] = window / window.sum()  # unity gain at DC
    return normalised


_LOWPASS = _design_lowpass()
_LOWPASS_48K = _design_lowpass(97, 7000.0, 48_000)


class Upsampler:
    """8 kHz → 24 kHz; every input sample yields exactly three output samples."""

    def __init__(self) -> None:
        self._history = np.zeros(TAPS - 1)

    def process(self, pcm: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        stuffed = np.zeros(len(pcm) * FACTOR)
        stuffed[::FACTOR] = np.asarray(pcm, dtype=np.float64) * FACTOR
        signal = np.concatenate([self._history, stuffed])
        self._history = signal[-(TAPS - 1) :]
        return np.convolve(signal, _LOWPASS, mode="valid").astype(np.float32)


class Downsampler:
    """24 kHz → 8 kHz; keeps the sample phase across calls, so any chunking gives len(total)/3 samples."""

    def __init__(self) -> None:
        self._history = np.zeros(TAPS - 1)
        self._consumed = 0

    def process(self, pcm: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        signal = np.concatenate([self._history, np.asarray(pcm, dtype=np.float64)])
        self._history = signal[-(TAPS - 1) :]
        filtered = np.convolve(signal, _LOWPASS, mode="valid")  # one value per input sample
        first = (-self._consumed) % FACTOR  # the next input index that is a multiple of 3
        self._consumed += len(pcm)
        return filtered[first::FACTOR].astype(np.float32)


class To16k:
    """24 kHz → 16 kHz; keeps the phase across calls, so any chunking gives len(total) * 2/3 samples.

    Polyphase: of the zero-stuffed 48 kHz signal only every other sample is non-zero, so the even and the
    odd 48 kHz outputs are the 24 kHz input filtered by the even and the odd taps (half the work of
    filtering the stuffed signal), interleaved, then every 3rd is kept."""

    _EVEN = _LOWPASS_48K[0::2] * 2  # 49 taps (gain 2: the zero-stuffing halves the energy)
    _ODD = _LOWPASS_48K[1::2] * 2  # 48 taps
    _HISTORY = len(_EVEN) - 1

    def __init__(self) -> None:
        self._history = np.zeros(self._HISTORY)
        self._consumed = 0
        """Samples at 48 kHz seen so far (the decimation phase)."""

    def process(self, pcm: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        n = len(pcm)
        signal = np.concatenate([self._history, np.asarray(pcm, dtype=np.float64)])
        self._history = signal[-self._HISTORY :]
        filtered = np.empty(2 * n)
        filtered[0::2] = np.convolve(signal, self._EVEN, mode="valid")
        filtered[1::2] = np.convolve(signal, self._ODD, mode="valid")[1 : n + 1]
        first = (-self._consumed) % 3
        self._consumed += 2 * n
        return filtered[first::3].astype(np.float32)
