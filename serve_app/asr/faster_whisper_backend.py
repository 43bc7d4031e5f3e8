"""faster-whisper (Whisper on CTranslate2) from a model directory on disk: the self-hosted production
backend. CPU or GPU (`device`, `compute_type`).

It never downloads: a directory missing any of the files a converted model needs is refused at load with
the list of what is missing (faster-whisper itself would silently fetch a tokenizer from the Hub when
`tokenizer.json` is absent).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt

from serve_app.asr.backend import TranscriptionFailed
from serve_app.protocol.resample import To16k

REQUIRED = ("model.bin", "config.json", "tokenizer.json")
VOCABULARY = ("vocabulary.json", "vocabulary.txt")


class ModelDirectoryIncomplete(RuntimeError):
    """The configured model directory cannot be loaded without downloading."""


def check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise ModelDirectoryIncomplete(f"faster-whisper model directory {path} does not exist")
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if not any((path / name).is_file() for name in VOCABULARY):
        missing.append(" or ".join(VOCABULARY))
    if missing:
        raise ModelDirectoryIncomplete(
            f"faster-whisper model directory {path} lacks {', '.join(missing)} (convert the model with "
            "ct2-transformers-converter --copy_files tokenizer.json preprocessor_config.json)"
        )


class FasterWhisperTranscriber:
    def __init__(self, model_dir: Path, *, device: str, compute_type: str, beam_size: int) -> None:
        check_model_dir(model_dir)
        from faster_whisper import WhisperModel

        self._model = WhisperModel(str(model_dir), device=device, compute_type=compute_type)
        self._beam_size = beam_size
        self._lock = threading.Lock()

    def transcribe(
        self, pcm: npt.NDArray[np.float32], *, language: str | None = None, prompt: str | None = None
    ) -> str:
        audio = To16k().process(pcm)
        try:
            with self._lock:
                segments, _ = self._model.transcribe(
                    audio,
                    language=language or None,
                    initial_prompt=prompt or None,
                    beam_size=self._beam_size,
                    temperature=0.0,
                    condition_on_previous_text=False,
                    without_timestamps=True,
                    vad_filter=False,  # server VAD already cut the turn
                )
                text = " ".join(segment.text.strip() for segment in segments)
        except ValueError as exc:  # e.g. a language the model does not know
            raise TranscriptionFailed(f"faster-whisper refused the turn: {exc}") from exc
        return text.strip()
