"""The configured backends, built on first use, and the choice between them by a session's `model`."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt

from serve_app.asr.backend import Transcriber, TranscriptionFailed
from serve_app.asr.config import AsrBackendConfig, AsrConfig


def build_transcriber(config: AsrBackendConfig) -> Transcriber:
    if config.kind == "pocketsphinx":
        from serve_app.asr.pocketsphinx_backend import PocketsphinxTranscriber

        return PocketsphinxTranscriber()
    if config.kind == "kyutai":
        raise ValueError("the kyutai backend streams on engine slots; it is not a turn transcriber")
    if config.kind == "faster_whisper":
        from serve_app.asr.faster_whisper_backend import FasterWhisperTranscriber

        assert config.model_dir is not None  # validated
        return FasterWhisperTranscriber(
            Path(config.model_dir),
            device=config.device,
            compute_type=config.compute_type,
            beam_size=config.beam_size,
        )
    from serve_app.asr.openai_backend import OpenAITranscriber

    return OpenAITranscriber(
        base_url=config.base_url,
        model=config.model or config.id,
        api_key_env=config.api_key_env,
        timeout_s=config.timeout_s,
    )


class AsrService:
    def __init__(self, config: AsrConfig) -> None:
        self.config = config
        self._built: dict[str, Transcriber] = {}
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Build every turn-by-turn backend now (a deployment does this before it reports ready); the
        streaming backend runs on engine slots, started apart (serve_app/engine/startup.py)."""
        for backend in self.config.backends:
            if not backend.streaming:
                self._transcriber(backend)

    def _transcriber(self, backend: AsrBackendConfig) -> Transcriber:
        with self._lock:
            if backend.id not in self._built:
                self._built[backend.id] = build_transcriber(backend)
            return self._built[backend.id]

    def transcribe(
        self,
        pcm: npt.NDArray[np.float32],
        *,
        model: str | None = None,
        language: str | None = None,
        prompt: str | None = None,
    ) -> str:
        """Blocking; raises TranscriptionFailed with the reason a client reads."""
        backend = self.config.backend_for(model)
        if backend.streaming:
            raise TranscriptionFailed(
                f"the {backend.id} ASR backend streams while the user speaks; it has no turn-by-turn mode"
            )
        try:
            transcriber = self._transcriber(backend)
        except Exception as exc:  # a backend that cannot load fails each request, in words
            raise TranscriptionFailed(f"the {backend.id} ASR backend could not start: {exc}") from exc
        return transcriber.transcribe(pcm, language=language, prompt=prompt)
