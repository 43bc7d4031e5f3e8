"""What one engine tick hands to a session: the engine's only output type (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

_NO_HISTORY = np.zeros((0, 0), np.int32)
_NO_HISTORY.flags.writeable = False


@dataclass(frozen=True, slots=True)
class EngineFrame:
    """One 80 ms step of one slot's output."""

    pcm: npt.NDArray[np.float32]
    """FRAME_SAMPLES mono float32 samples at 24 kHz, nominally in [-1, 1]; empty from a text-only model
    (Kyutai STT), whose frames are its text alone."""

    text: str | None
    """The text piece Moshi produced this step, word-boundary marker already turned into a space;
    None for padding steps."""

    speaking: bool
    """Whether the model is speaking in this step (it produced a word piece)."""

    history: npt.NDArray[np.int32] = field(default_factory=lambda: _NO_HISTORY)
    """[steps, K] int32: the records of the steps since the slot's previous frame (usually one; the
    first frame also carries the steps that produced no output yet). What the session keeps to rebuild
    the slot elsewhere (serve_app/engine/history.py); empty from a text-only model."""

    scripted: bool = False
    """The text was forced from the slot's script (serve_app/engine/forced_text.py): `text` is that piece
    of the script exactly (None for the pauses between words)."""

    script_done: bool = False
    """This frame carries the script's last step: the scripted speech is over."""


@dataclass(frozen=True, slots=True)
class Persona:
    """Who a slot speaks as: its prompt (PersonaPlex: serve_app/engine/prompt.py), applied before its first
    step."""

    voice: str | None
    """A voice name of the model; None: the model's default voice."""

    instructions: str | None
    """The role text; None or "": the model's default persona."""
