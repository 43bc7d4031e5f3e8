"""Float ±1.0 ↔ PCM16, with one scale for every layer that converts (the wire codecs, the session history).

One scale both ways makes int16 → float → int16 exact, so a slot rebuilt from a session's kept PCM16 is
fed bit for bit the samples the live slot stepped (tests/engine/test_history.py). numpy only: the protocol
layer and the engine both import it, and neither imports the other.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

PCM16_SCALE: Final = 32768.0
"""A power of two: dividing by it is exact in float32, and int16 → float → int16 comes back unchanged."""


def float_to_pcm16(pcm: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    """Round to the nearest step and clip to int16 (+1.0 becomes 32767)."""
    scaled = np.rint(np.asarray(pcm, dtype=np.float64) * PCM16_SCALE)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def pcm16_to_float(samples: npt.NDArray[np.int16]) -> npt.NDArray[np.float32]:
    return (np.asarray(samples).astype(np.float32) / np.float32(PCM16_SCALE)).astype(np.float32)
