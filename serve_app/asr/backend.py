"""The interface every ASR backend implements, and its one failure."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt


class TranscriptionFailed(Exception):
    """The backend could not transcribe; the message is the reason the client reads in `.failed`."""


class Transcriber(Protocol):
    def transcribe(
        self, pcm: npt.NDArray[np.float32], *, language: str | None = None, prompt: str | None = None
    ) -> str:
        """24 kHz mono float32 of one committed user turn → its text. Raises TranscriptionFailed.
        Blocking: callers run it off their event loop."""
        ...
