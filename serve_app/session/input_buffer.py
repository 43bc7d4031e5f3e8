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

    def take(self) -> npt.NDArray[np.int16]:
        """Everything buffered, leaving the buffer empty (a commit)."""
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        self.clear()
        return pcm

    def clear(self) -> None:
        self._chunks = []
        self._samples = 0
