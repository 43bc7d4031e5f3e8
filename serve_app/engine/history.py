"""What a session keeps so that another replica can rebuild its slot (no torch here: the ingress holds it).

A slot's streaming state — Mimi's encoder and decoder, the LM's KV cache and delayed-token ring — is a
function of what the slot stepped: its input audio and, per step, one *record* of `K` integers (the
codebook layout of the LM: the text and audio tokens it sampled, then the input codes Mimi encoded). The
engine attaches each step's record to the frames it returns; the session's side keeps the last
`context_frames` records and the last `audio_frames` frames of stepped input audio, plus the input sent but
not stepped yet. `SessionHistory.window()` is what `BatchedEngine.open_slot(resume=...)` rebuilds from.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from serve_app.constants import FRAME_S, FRAME_SAMPLES, SAMPLE_RATE
from serve_app.pcm import float_to_pcm16, pcm16_to_float

Records = npt.NDArray[np.int32]
"""[steps, K] int32: one row per stepped frame (engine/rebuild.py documents the columns)."""

NO_RECORDS: Records = np.zeros((0, 0), np.int32)
NO_RECORDS.flags.writeable = False

MAX_PENDING_S = 30.0
"""Input sent but not stepped beyond this means the replica stopped stepping long ago: the history gives up
(a rebuild would replay a stale half-minute) and the session cannot move."""


@dataclass(frozen=True, slots=True)
class HistorySpec:
    """How much history a model's slot needs to be rebuilt; the replica says it in every admission."""

    record_width: int
    """K: integers per step (17 for Moshi: text, 8 audio tokens out, 8 input codes)."""
    context_frames: int
    """Records to keep: the LM's attention context (3000 steps = 240 s for Moshi)."""
    audio_frames: int
    """Stepped input frames to keep: what Mimi's encoder still sees (its transformer's context)."""


@dataclass(frozen=True, slots=True)
class ResumeWindow:
    """Everything a fresh slot needs to continue a session where its last replica left it."""

    steps: int
    """Frames the session has stepped in total (the LM's offset after them)."""
    records: Records
    """The records of the last `len(records)` steps (ending at `steps`)."""
    audio: npt.NDArray[np.float32]
    """The input audio of the last `len(audio) / FRAME_SAMPLES` stepped frames (ending at `steps`)."""
    pending: npt.NDArray[np.float32]
    """Input sent after the last stepped frame (not stepped yet): pushed to the new slot after the rebuild."""
    pending_age_s: float
    """How long ago the first pending sample arrived: the new slot treats it as that late (and catches up)."""

    @property
    def seconds(self) -> float:
        """Length of the kept token history (s)."""
        return len(self.records) * FRAME_S


class HistoryLost(Exception):
    """The history no longer describes the session (it fell too far behind): it cannot be resumed."""


class SessionHistory:
    """Bounded ring of one session's records and input audio. Loop-bound (no locks); sans-I/O.

    Memory is bounded by the spec: `context_frames × K × 4` bytes of records (204 KB for Moshi) plus
    `audio_frames` frames of int16 audio (480 KB) plus the pending input. Each append costs a few
    microseconds (no copy of what is kept); only `window()` assembles it."""

    def __init__(self, spec: HistorySpec) -> None:
        self.spec = spec
        self._records = np.zeros((spec.context_frames, spec.record_width), np.int32)
        self.steps = 0
        """Frames stepped in total (records received)."""
        self._chunks: deque[tuple[int, float, npt.NDArray[np.int16]]] = deque()
        """(first sample index, arrival time, PCM16) of each input chunk still needed, oldest first."""
        self._received = 0
        """Input samples received in total."""
        self.lost: str | None = None

    # --- input --------------------------------------------------------------------------------------

    def add_input(self, pcm: npt.NDArray[np.float32], now: float) -> None:
        if self.lost is not None:
            return
        samples = float_to_pcm16(pcm)  # the wire's scale: PCM16 input comes back bit for bit
        self._chunks.append((self._received, now, samples))
        self._received += samples.size
        if self._received - self.steps * FRAME_SAMPLES > MAX_PENDING_S * SAMPLE_RATE:
            self.lost = f"more than {MAX_PENDING_S:g} s of input was never stepped"
            self._chunks.clear()

    def add_records(self, records: Records) -> None:
        """The records a frame carried (one per step, in order)."""
        if self.lost is not None or not records.size:
            return
        if records.shape[1] != self.spec.record_width:
            raise ValueError(f"records of width {records.shape[1]}, expected {self.spec.record_width}")
        capacity = self.spec.context_frames
        self.steps += max(0, len(records) - capacity)  # older than the context: never needed
        for row in records[-capacity:]:
            self._records[self.steps % capacity] = row
            self.steps += 1
        keep_from = max(0, (self.steps - self.spec.audio_frames) * FRAME_SAMPLES)
        while self._chunks and self._chunks[0][0] + self._chunks[0][2].size <= keep_from:
            self._chunks.popleft()

    # --- the window ---------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        return int(self._records.nbytes + sum(chunk.nbytes for _, _, chunk in self._chunks))

    def window(self, now: float) -> ResumeWindow:
        if self.lost is not None:
            raise HistoryLost(self.lost)
        stepped = self.steps * FRAME_SAMPLES
        if stepped > self._received:
            raise HistoryLost("the replica stepped audio this session never sent")
        kept = min(self.steps, self.spec.context_frames)
        capacity = self.spec.context_frames
        order = [(self.steps - kept + i) % capacity for i in range(kept)]
        first = self._chunks[0][0] if self._chunks else self._received
        joined = np.concatenate([c for _, _, c in self._chunks]) if self._chunks else np.zeros(0, np.int16)
        keep_from = max(first, (self.steps - self.spec.audio_frames) * FRAME_SAMPLES)
        audio = pcm16_to_float(joined[keep_from - first : stepped - first])
        pending = pcm16_to_float(joined[stepped - first :])
        # The chunk holding the first pending sample: it arrived at its recorded time.
        arrivals = [at for start, at, chunk in self._chunks if start + chunk.size > stepped]
        age = max(0.0, now - arrivals[0]) if pending.size and arrivals else 0.0
        return ResumeWindow(self.steps, self._records[order].copy(), audio, pending, age)
