"""One stretch of Moshi speech: from its first speaking frame until enough silence, or a length cap.

Moshi always listens and may speak at any time; the turn-based protocol needs turns, so an utterance
(and the response that carries it) ends after `silence_frames` consecutive non-speaking frames, which
still belong to it, or after `max_frames` frames. A client may stop the response carrying it while Moshi
goes on speaking in the model: the utterance is then `muted`, and its frames stay off the wire until it
ends.
"""

from __future__ import annotations

from enum import StrEnum


class UtteranceEnd(StrEnum):
    SILENCE = "silence"
    MAX_LENGTH = "max_length"


class Utterance:
    def __init__(self, *, silence_frames: int, max_frames: int) -> None:
        self._silence_frames = silence_frames
        self._max_frames = max_frames
        self.frames = 0
        self.silent_run = 0
        self.muted = False
        """Its response was cancelled: the rest of it reaches no client."""

    def add(self, speaking: bool) -> UtteranceEnd | None:
        """Count one frame; says why the utterance ended with this frame, or None while it goes on."""
        self.frames += 1
        self.silent_run = 0 if speaking else self.silent_run + 1
        if self.silent_run >= self._silence_frames:
            return UtteranceEnd.SILENCE
        if self.frames >= self._max_frames:
            return UtteranceEnd.MAX_LENGTH
        return None
