"""The voice names of the PersonaPlex checkpoints we serve, known without loading one (no torch here).

The ingress validates a session's `voice` against these before any replica is asked (serve_app/config.py
`ModelTraits`); the replica's loaded voices are the truth and must agree (serve_app/engine/startup.py).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["DEFAULT_VOICE", "PERSONAPLEX_VOICES", "TINY_VOICE_FRAMES", "default_voice"]

PERSONAPLEX_VOICES: tuple[str, ...] = (
    *(f"NATF{i}" for i in range(4)),
    *(f"NATM{i}" for i in range(4)),
    *(f"VARF{i}" for i in range(5)),
    *(f"VARM{i}" for i in range(5)),
)
"""The 18 voice prompts of nvidia/personaplex-7b-v1's `voices.tgz` (natural and varied, female and male)."""

DEFAULT_VOICE = "NATF2"
"""vLLM-Omni's default; a checkpoint without it falls back to its first voice by name."""

TINY_VOICE_FRAMES: dict[str, int] = {"NATF0": 9, "NATM1": 12, "VARF2": 7}
"""The tiny PersonaPlex checkpoint's voices (serve_app/engine/tiny_persona.py) -> voice-prompt frames (real
ones are 43-68 frames; short ones keep tests fast)."""


def default_voice(voices: Iterable[str]) -> str | None:
    """The voice a session gets when it names none: DEFAULT_VOICE if the model has it, else its first by
    name (as serve_app/engine/personaplex.py `pick_voice` chooses)."""
    names = sorted(voices)
    if not names:
        return None
    return DEFAULT_VOICE if DEFAULT_VOICE in names else names[0]
