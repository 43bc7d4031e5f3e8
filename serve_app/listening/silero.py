"""Silero VAD through onnxruntime: the ONNX file bundled in the `silero-vad` wheel, no torch.

`import silero_vad` imports torch and sets torch's thread count for the whole process, so the package is
never imported: only its data file is located. One `SileroVad` (an onnxruntime session on one thread) is
shared by every stream of a process; each `SileroStream` keeps its own recurrent state and context.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import numpy.typing as npt

RATE = 16_000
WINDOW = 512
"""Samples per inference at 16 kHz (32 ms): the only window size the model takes at this rate."""
CONTEXT = 64
"""Samples of the previous window the model sees before each new one."""
WINDOW_MS = WINDOW * 1000 / RATE


class VadUnavailable(RuntimeError):
    """The VAD model or runtime is missing: server VAD cannot run."""


def bundled_model() -> Path:
    spec = importlib.util.find_spec("silero_vad")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise VadUnavailable("the silero-vad package is not installed (pip install silero-vad)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise VadUnavailable(f"silero-vad's ONNX model is missing: {path}")
    return path


class SileroVad:
    def __init__(self, path: Path | None = None) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise VadUnavailable("onnxruntime is not installed (pip install onnxruntime)") from exc
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # tiny model: threads would only contend with the event loop
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(path or bundled_model()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._rate = np.array(RATE, dtype=np.int64)

    def stream(self) -> SileroStream:
        return SileroStream(self)

    def infer(
        self, window: npt.NDArray[np.float32], state: npt.NDArray[np.float32]
    ) -> tuple[float, npt.NDArray[np.float32]]:
        """One window (CONTEXT + WINDOW samples) → (speech probability, next state)."""
        probability, next_state = self._session.run(
            None, {"input": window[np.newaxis, :], "state": state, "sr": self._rate}
        )
        return float(probability[0, 0]), next_state


class SileroStream:
    """16 kHz audio in any chunk sizes → one speech probability per complete 32 ms window."""

    def __init__(self, model: SileroVad) -> None:
        self._model = model
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._pending = np.zeros(CONTEXT, dtype=np.float32)
        """The context (last CONTEXT samples judged) followed by samples not yet judged."""

    def push(self, pcm: npt.NDArray[np.float32]) -> list[float]:
        self._pending = np.concatenate([self._pending, np.asarray(pcm, dtype=np.float32)])
        probabilities = []
        while len(self._pending) >= CONTEXT + WINDOW:
            window = self._pending[: CONTEXT + WINDOW]
            probability, self._state = self._model.infer(window, self._state)
            probabilities.append(probability)
            self._pending = self._pending[WINDOW:]
        return probabilities
