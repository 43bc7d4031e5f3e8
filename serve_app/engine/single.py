"""moshi's plain single-stream loop at batch 1, as the stock server runs it (one session behind a lock).

The parity reference for the batched engine, and the lock-per-model baseline of the benchmark.
"""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import numpy.typing as npt
import torch
from moshi.models.lm import LMGen

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.loader import LoadedModel
from serve_app.engine.spec import SamplingParams

StepOutput = tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]
"""Tokens [1 + dep_q] (text, then audio codes) and one frame of pcm."""


class SingleStream:
    """One session on the whole model: `mimi.streaming(1)`, `LMGen.streaming(1)`, stock first-frame trick."""

    def __init__(self, model: LoadedModel, sampling: SamplingParams) -> None:
        self._model = model
        self._lm_gen = LMGen(
            model.lm,
            **sampling.lm_gen_kwargs(),
        )
        self._streams = ExitStack()
        with torch.no_grad():
            self._streams.enter_context(model.mimi.streaming(1))
            self._streams.enter_context(self._lm_gen.streaming(1))
        self._first = True

    def reset(self) -> None:
        """Start a new session (what the stock server does when the lock changes hands)."""
        with torch.no_grad():
            self._model.mimi.reset_streaming()
            self._lm_gen.reset_streaming()
        self._first = True

    def step(self, frame: npt.NDArray[np.float32]) -> StepOutput | None:
        """One 80 ms frame in; None on the session's first step (moshi's acoustic delay)."""
        if frame.shape != (FRAME_SAMPLES,):
            raise ValueError(f"expected one frame of {FRAME_SAMPLES} samples, got {frame.shape}")
        mimi, device = self._model.mimi, self._model.device
        with torch.no_grad():
            codes = mimi.encode(torch.from_numpy(frame).to(device)[None, None])
            if self._first:
                mimi.reset_streaming()  # stock server: re-apply the encoder's left padding after frame one
                self._first = False
            tokens = self._lm_gen.step(codes)
            if tokens is None:
                return None
            pcm = mimi.decode(tokens[:, 1:])
            return tokens[0, :, 0].cpu().numpy(), pcm[0, 0].float().cpu().numpy()

    def close(self) -> None:
        self._streams.close()

    def __enter__(self) -> SingleStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
