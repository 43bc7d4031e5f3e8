"""Any OpenAI-compatible transcription API (OpenAI itself, or a self-hosted server speaking the same API)
through the official `openai` client: POST /audio/transcriptions with the turn as a WAV file."""

from __future__ import annotations

import io
import os
import wave

import numpy as np
import numpy.typing as npt

from serve_app.asr.backend import TranscriptionFailed
from serve_app.constants import SAMPLE_RATE
from serve_app.protocol.codecs import float_to_pcm16, pcm16_to_bytes


def wav_bytes(pcm: npt.NDArray[np.float32]) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(pcm16_to_bytes(float_to_pcm16(pcm)))
    return buffer.getvalue()


class OpenAITranscriber:
    def __init__(self, *, base_url: str | None, model: str, api_key_env: str, timeout_s: float) -> None:
        from openai import OpenAI

        # The key is read from the environment (never from config files, never logged).
        self._client = OpenAI(
            base_url=base_url,
            api_key=os.environ.get(api_key_env) or "unset",
            timeout=timeout_s,
            max_retries=1,
        )
        self._model = model

    def transcribe(
        self, pcm: npt.NDArray[np.float32], *, language: str | None = None, prompt: str | None = None
    ) -> str:
        import openai

        try:
            result = self._client.audio.transcriptions.create(
                model=self._model,
                file=("turn.wav", wav_bytes(pcm), "audio/wav"),
                language=language or openai.omit,
                prompt=prompt or openai.omit,
            )
        except openai.APIStatusError as exc:
            raise TranscriptionFailed(f"the transcription API answered {exc.status_code}") from exc
        except openai.APIError as exc:
            raise TranscriptionFailed(f"the transcription API failed: {type(exc).__name__}") from exc
        return str(result.text).strip()
