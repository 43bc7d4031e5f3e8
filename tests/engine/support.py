"""Helpers shared by the engine tests."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from serve_app.constants import FRAME_SAMPLES

TINY_SEED = 1234
"""The tiny checkpoint every engine test shares (built once per run)."""


def noise(frames: int, seed: int, level: float = 0.1) -> npt.NDArray[np.float32]:
    """Whole frames of white noise: deterministic input that exercises every codebook."""
    return (np.random.default_rng(seed).standard_normal(frames * FRAME_SAMPLES) * level).astype(np.float32)
