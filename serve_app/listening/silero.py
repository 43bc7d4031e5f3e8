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
        self, windows: npt.NDArray[np.float32], states: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """A batch: windows [B, CONTEXT + WINDOW], states [2, B, 128] → (probabilities [B], states)."""
        probabilities, next_states = self._session.run(
            None, {"input": windows, "state": states, "sr": self._rate}
        )
        return probabilities[:, 0], next_states

    def run(self, streams: list[SileroStream]) -> dict[SileroStream, list[float]]:
        """Judge every complete window the streams hold, one batched inference per round: batching many
        sessions' windows halves the model's cost per window (the tiny model is mostly call overhead)."""
        found: dict[SileroStream, list[float]] = {stream: [] for stream in streams}
        while ready := [stream for stream in streams if stream.ready]:
            windows = np.stack([stream.window() for stream in ready])
            states = np.concatenate([stream.state for stream in ready], axis=1)
            probabilities, next_states = self.infer(windows, states)
            for k, stream in enumerate(ready):
                stream.advance(next_states[:, k : k + 1, :])
                found[stream].append(float(probabilities[k]))
        return found


class SileroStream:
    """16 kHz audio in any chunk sizes → one speech probability per complete 32 ms window."""

    def __init__(self, model: SileroVad) -> None:
        self._model = model
        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self._pending = np.zeros(CONTEXT, dtype=np.float32)
        """The context (last CONTEXT samples judged) followed by samples not yet judged."""

    def feed(self, pcm: npt.NDArray[np.float32]) -> None:
        self._pending = np.concatenate([self._pending, np.asarray(pcm, dtype=np.float32)])

    @property
    def ready(self) -> bool:
        return len(self._pending) >= CONTEXT + WINDOW

    def window(self) -> npt.NDArray[np.float32]:
        return self._pending[: CONTEXT + WINDOW]

    def advance(self, state: npt.NDArray[np.float32]) -> None:
        self.state = np.ascontiguousarray(state)
        self._pending = self._pending[WINDOW:]

    def push(self, pcm: npt.NDArray[np.float32]) -> list[float]:
        """Feed and judge this stream alone."""
        self.feed(pcm)
        return self._model.run([self])[self]
