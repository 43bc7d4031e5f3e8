"""pocketsphinx: the embedded default. Its US-English model ships inside the wheel, so it runs offline.

A fallback and test engine rather than production quality (≈5 % WER on clean festival speech, far worse
in noise; see docs/ARCHITECTURE.md); it costs 0.15-0.27 s of CPU per second of audio.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

from serve_app.asr.backend import TranscriptionFailed
from serve_app.protocol.codecs import float_to_pcm16, pcm16_to_bytes
from serve_app.protocol.resample import To16k

RATE = 16_000


class PocketsphinxTranscriber:
    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self._decoder = Decoder(samprate=RATE, loglevel="FATAL")
        self._lock = threading.Lock()  # one decoder: one utterance at a time

    def transcribe(
        self, pcm: npt.NDArray[np.float32], *, language: str | None = None, prompt: str | None = None
    ) -> str:
        del prompt  # pocketsphinx has no prompting
        if language not in (None, "", "en") and not str(language).startswith("en"):
            raise TranscriptionFailed(f"the pocketsphinx backend transcribes English only, not {language!r}")
        samples = pcm16_to_bytes(float_to_pcm16(To16k().process(pcm)))
        with self._lock:
            self._decoder.start_utt()
            self._decoder.process_raw(samples, full_utt=True)
            self._decoder.end_utt()
            hypothesis = self._decoder.hyp()
        return "" if hypothesis is None else str(hypothesis.hypstr)
