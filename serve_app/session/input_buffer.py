"""The input audio buffer: what the client appended since the last commit or clear.

Moshi hears every appended sample as it arrives, whatever happens here; the buffer only decides what a
commit turns into a user item. It keeps 24 kHz PCM16 (half the memory of float32) and, because a
full-duplex client may stream for minutes without committing, only the newest `max_ms` of it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from serve_app.constants import SAMPLE_RATE
from serve_app.protocol.codecs import float_to_pcm16


class InputBuffer:
    def __init__(self, *, max_ms: int) -> None:
        self._max_samples = max_ms * SAMPLE_RATE // 1000
        self._chunks: list[npt.NDArray[np.int16]] = []
        self._samples = 0

    @property
    def duration_ms(self) -> float:
        return self._samples * 1000 / SAMPLE_RATE

    def append(self, pcm: npt.NDArray[np.float32]) -> None:
        if len(pcm) == 0:
            return
        self._chunks.append(float_to_pcm16(pcm))
        self._samples += len(pcm)
        while self._samples > self._max_samples:
            excess = self._samples - self._max_samples
            oldest = self._chunks[0]
            if len(oldest) <= excess:
                self._chunks.pop(0)
                self._samples -= len(oldest)
            else:
                self._chunks[0] = oldest[excess:]
                self._samples -= excess

    @property
    def samples(self) -> int:
        return self._samples

    def take(self, samples: int | None = None) -> npt.NDArray[np.int16]:
        """The oldest `samples` (default: everything), removed from the buffer (a commit); what was
        appended after them stays for the next commit."""
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        count = len(pcm) if samples is None else max(0, min(samples, len(pcm)))
        rest = pcm[count:]
        self._chunks = [rest] if len(rest) else []
        self._samples = len(rest)
        return pcm[:count]

    def keep_last(self, samples: int) -> None:
        """Drop all but the newest `samples` (server VAD: audio before a speech start's prefix padding)."""
        if samples < self._samples:
            self.take(self._samples - max(0, samples))

    def clear(self) -> None:
        self._chunks = []
        self._samples = 0
