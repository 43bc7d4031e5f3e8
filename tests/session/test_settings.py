from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_app.session.settings import SessionSettings


def test_defaults() -> None:
    settings = SessionSettings()
    assert (settings.utterance_silence_ms, settings.response_wait_ms, settings.max_utterance_ms) == (
        800,
        4000,
        30_000,
    )
    assert settings.min_commit_ms == 100 and settings.default_voice == "alloy"


def test_typos_and_nonsense_are_refused() -> None:
    with pytest.raises(ValidationError):
        SessionSettings(utterance_silence=800)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        SessionSettings(utterance_silence_ms=10)  # shorter than one frame
