"""Audio clock constants fixed by Mimi; every layer imports them from here."""

from typing import Final

SAMPLE_RATE: Final = 24_000
"""Mimi and the OpenAI Realtime PCM16 format both run at 24 kHz mono."""

FRAME_SAMPLES: Final = 1920
"""One Mimi frame: 80 ms at 24 kHz (12.5 Hz)."""

FRAME_RATE: Final = 12.5
FRAME_MS: Final = 80
FRAME_S: Final = FRAME_MS / 1000
"""The frame period in seconds: the engine's tick and a paced client's send interval."""
BYTES_PER_SAMPLE_PCM16: Final = 2
