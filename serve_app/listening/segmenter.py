"""Speech probabilities per VAD window → speech started / stopped, on the session's input timeline.

The hosted service's server VAD semantics (turn_detection type `server_vad`):
- speech starts at the first window whose probability reaches `threshold`; `audio_start_ms` is that
  window's start less `prefix_padding_ms` (the committed item keeps that much audio before the onset);
- speech stops once the probability stayed below `threshold - HYSTERESIS` for `silence_duration_ms`;
  `audio_end_ms` is the end of that silence (it includes `silence_duration_ms`, as the hosted service's
  does), so the speech itself ended `silence_duration_ms` earlier.
The hysteresis is Silero's own (its VADIterator ends speech below threshold - 0.15): a probability that
hovers around the threshold does not split one utterance into many.
"""

from __future__ import annotations

from dataclasses import dataclass

HYSTERESIS = 0.15


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    audio_end_ms: int
    speech_end_ms: int | None = None
    """Where the last window that counted as speech ended (`audio_end_ms` less the silence run)."""


VadEvent = SpeechStarted | SpeechStopped


@dataclass(frozen=True, slots=True)
class VadParams:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


class TurnSegmenter:
    def __init__(self, params: VadParams, window_ms: float, *, offset_ms: float = 0.0) -> None:
        self.params = params
        self.window_ms = window_ms
        self.offset_ms = offset_ms
        self._windows = 0
        self._speaking = False
        self._voice_until_ms = 0.0
        """End of the last window that still counted as speech."""

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def position_ms(self) -> float:
        """End of the last window judged, on the input timeline."""
        return self.offset_ms + self._windows * self.window_ms

    def push(self, probability: float) -> VadEvent | None:
        start_ms = self.position_ms
        self._windows += 1
        end_ms = self.position_ms
        p = self.params
        if not self._speaking:
            if probability >= p.threshold:
                self._speaking = True
                self._voice_until_ms = end_ms
                return SpeechStarted(max(0, round(start_ms - p.prefix_padding_ms)))
            return None
        if probability >= p.threshold - HYSTERESIS:
            self._voice_until_ms = end_ms
        elif end_ms - self._voice_until_ms >= p.silence_duration_ms:
            self._speaking = False
            return SpeechStopped(round(end_ms), speech_end_ms=round(self._voice_until_ms))
        return None
