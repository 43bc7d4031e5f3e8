"""Silero VAD through onnxruntime: the bundled model, without importing torch or the silero_vad package."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from serve_app.listening.silero import CONTEXT, WINDOW, SileroVad, bundled_model
from serve_app.protocol.resample import To16k
from tests.fixtures.speech import sentences, sentences_float


def test_the_model_is_the_one_inside_the_silero_vad_wheel() -> None:
    path = bundled_model()
    assert path.name == "silero_vad.onnx" and path.parent.name == "data" and path.stat().st_size > 100_000


def test_loading_and_running_it_imports_neither_torch_nor_silero_vad() -> None:
    # `import silero_vad` would import torch and set torch's thread count for the whole process.
    code = (
        "import sys, numpy as np\n"
        "from serve_app.listening.silero import SileroVad\n"
        "SileroVad().stream().push(np.zeros(2048, np.float32))\n"
        "print(sorted(m for m in ('torch', 'silero_vad') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_silence_is_not_speech_and_a_spoken_sentence_is() -> None:
    stream = SileroVad().stream()
    assert max(stream.push(np.zeros(16_000, np.float32))) < 0.1
    first = sentences()[0]
    speech = To16k().process(sentences_float()[first.start_ms * 24 : first.end_ms * 24])
    probabilities = SileroVad().stream().push(speech)
    assert np.mean(np.asarray(probabilities) > 0.5) > 0.6, probabilities


def test_probabilities_do_not_depend_on_how_the_audio_is_chunked() -> None:
    audio = To16k().process(sentences_float()[:48_000])
    model = SileroVad()
    whole = model.stream().push(audio)
    stream = model.stream()
    chunked: list[float] = []
    for start in range(0, len(audio), 700):
        chunked += stream.push(audio[start : start + 700])
    assert len(whole) == len(chunked) == len(audio) // WINDOW
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    assert CONTEXT == 64
