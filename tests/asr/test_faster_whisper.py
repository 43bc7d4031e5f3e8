"""faster-whisper from a model directory: a clear refusal when files are missing (it must never fall
back to downloading), and the real loading and transcription path on a tiny random-weight model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from serve_app.asr.backend import TranscriptionFailed
from serve_app.asr.config import AsrBackendConfig, AsrConfig
from serve_app.asr.faster_whisper_backend import FasterWhisperTranscriber, ModelDirectoryIncomplete
from serve_app.asr.service import AsrService
from tests.fixtures.speech import sentences_float
from tests.fixtures.tiny_whisper import make_tiny_whisper


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny")


def backend(path: Path) -> AsrService:
    config = AsrBackendConfig(id="whisper-local", kind="faster_whisper", model_dir=str(path), beam_size=1)
    return AsrService(AsrConfig(backends=(config,), default="whisper-local"))


def test_a_directory_without_its_tokenizer_is_refused_by_name_not_downloaded(
    model_dir: Path, tmp_path: Path
) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(model_dir, partial)
    (partial / "tokenizer.json").unlink()
    with pytest.raises(ModelDirectoryIncomplete, match=r"lacks tokenizer\.json"):
        FasterWhisperTranscriber(partial, device="cpu", compute_type="default", beam_size=1)
    # Through the service a turn fails in words, and a deployment's warm-up fails with the same reason.
    with pytest.raises(TranscriptionFailed, match=r"could not start: .*lacks tokenizer\.json"):
        backend(partial).transcribe(np.zeros(2400, np.float32))
    with pytest.raises(ModelDirectoryIncomplete, match="does not exist"):
        backend(tmp_path / "nowhere").warm_up()


def test_the_tiny_model_loads_and_transcribes_a_turn(model_dir: Path) -> None:
    asr = backend(model_dir)
    asr.warm_up()
    text = asr.transcribe(sentences_float()[:48_000], language="en")
    assert isinstance(text, str)  # random weights: the words mean nothing, the path is what is tested


def test_faster_whisper_needs_a_model_dir() -> None:
    with pytest.raises(ValueError, match="needs model_dir"):
        AsrBackendConfig(id="w", kind="faster_whisper")
