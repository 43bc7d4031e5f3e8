"""One session's server VAD: 24 kHz input → 16 kHz → Silero probabilities → speech start/stop events."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from serve_app.constants import SAMPLE_RATE
from serve_app.listening.segmenter import TurnSegmenter, VadEvent, VadParams
from serve_app.listening.silero import WINDOW_MS, SileroStream, SileroVad
from serve_app.protocol.resample import To16k


class VadStream:
    """Fed the exact PCM Moshi hears, in order, so its timeline is the session's input timeline."""

    def __init__(self, model: SileroVad, params: VadParams, *, offset_samples: int = 0) -> None:
        """`offset_samples`: input the session heard before this stream started (VAD switched on late)."""
        self._resample = To16k()
        self._silero = model.stream()
        self._segmenter = TurnSegmenter(params, WINDOW_MS, offset_ms=offset_samples * 1000 / SAMPLE_RATE)

    @property
    def params(self) -> VadParams:
        return self._segmenter.params

    @params.setter
    def params(self, params: VadParams) -> None:
        self._segmenter.params = params  # a session.update: applies from the next window on

    @property
    def speaking(self) -> bool:
        return self._segmenter.speaking

    @property
    def silero(self) -> SileroStream:
        return self._silero

    def feed(self, pcm: npt.NDArray[np.float32]) -> None:
        """Take input; its windows are judged by the next `SileroVad.run` over this stream's `silero`."""
        self._silero.feed(self._resample.process(pcm))

    def judge(self, probabilities: list[float]) -> list[VadEvent]:
        events = []
        for probability in probabilities:
            event = self._segmenter.push(probability)
            if event is not None:
                events.append(event)
        return events

    def push(self, pcm: npt.NDArray[np.float32]) -> list[VadEvent]:
        """Feed and judge this stream alone (the ingress batches many: serve_app/server/listener.py)."""
        self.feed(pcm)
        return self.judge(self._silero.push(np.zeros(0, dtype=np.float32)))
