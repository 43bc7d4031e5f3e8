"""Choosing a backend by the session's transcription model."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_app.asr.config import AsrBackendConfig, AsrConfig
from serve_app.config import AppConfig


def test_the_embedded_default_is_pocketsphinx_for_any_model_name() -> None:
    asr = AppConfig.embedded_default().asr
    assert asr.backend_for("whisper-1").kind == "pocketsphinx"
    assert asr.backend_for(None).kind == "pocketsphinx"


def test_a_model_naming_a_backend_picks_it_and_others_take_the_default() -> None:
    asr = AsrConfig(
        backends=(
            AsrBackendConfig(id="pocketsphinx", kind="pocketsphinx"),
            AsrBackendConfig(id="gpt-4o-transcribe", kind="openai"),
        ),
        default="pocketsphinx",
    )
    assert asr.backend_for("gpt-4o-transcribe").kind == "openai"
    assert asr.backend_for("whisper-1").id == "pocketsphinx"


def test_the_default_must_be_one_of_the_backends() -> None:
    with pytest.raises(ValidationError, match=r"asr\.default"):
        AsrConfig(backends=(AsrBackendConfig(id="a", kind="pocketsphinx"),), default="b")
