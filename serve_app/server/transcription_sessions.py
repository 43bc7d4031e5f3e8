"""Transcription sessions in the socket shell: which ASR backend a `?intent=transcription` URL asks for,
and how many such sessions this ingress serves (for /v1/status).

A transcription session holds no Moshi slot: a streaming backend's session holds one slot of the ASR
deployment's engine for its life (admitted with the session, so a full ASR refuses it at once with
`server_at_capacity`), a turn-by-turn backend's its place in the ASR queue (its `TranscriptionPump`, one
turn at a time).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from serve_app.asr.config import AsrBackendConfig, AsrConfig

INTENT = "transcription"
"""The URL's `intent` of a transcription session (what the official SDKs send)."""


def transcription_backend(asr: AsrConfig, url_model: str | None) -> AsrBackendConfig:
    """The backend the URL's `model` names (`?model=kyutai-stt&intent=transcription`), else the default:
    the official GA SDK sends no model for a transcription session, and beta clients name OpenAI's."""
    return asr.backend_for(url_model)


class TranscriptionSessions:
    """This ingress's open transcription sessions, per backend."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self, backend: str) -> Iterator[None]:
        self._open[backend] += 1
        try:
            yield
        finally:
            self._open[backend] -= 1
            if not self._open[backend]:
                del self._open[backend]

    def status(self) -> dict[str, int]:
        """Open sessions per backend id ({} when none)."""
        return dict(self._open)
