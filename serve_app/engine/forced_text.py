"""Scripted speech: a slot's text forced into Moshi's text stream, so Moshi says it in its own voice.

Moshi's text stream is its inner monologue: LMGen calls `on_text_hook(token)` right after sampling, and a
token overwritten there is what the depformer conditions the audio on and what the LM reads next (Kyutai's
TTS feeds text exactly this way, moshi/models/tts.py). Paced as a Moshi text stream looks, and as the TTS
state machine paces words: a few PADs first, then per word the end-of-padding marker, its pieces one per
frame, and PADs after it (forcing pieces back to back, one per 80 ms, sounds rushed), a few PADs at the end
so the audio of the last word is out when the script reports done.

Each forced piece carries the exact span of the script it speaks (leading spaces included, unknown pieces
merged into a neighbour), so the pieces a slot reports join to exactly the script. Rows without a script
are never touched: a neighbour's tokens are bit-identical with or without a scripted slot beside it.

A held model (`hold`: a model in delegate mode, serve_app/delegate/config.py) speaks only its scripts: every
stepping row without one has its text forced to PAD, so Moshi listens (and its audio may backchannel) but
says no words of its own. PAD has no text, so those frames report none and are not `speaking`.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["ForcedText", "ScriptPacing", "ScriptStatus", "ScriptStep", "script_steps"]


@dataclass(frozen=True)
class ScriptPacing:
    lead_pads: int = 2
    """PADs before the first word (TTS `initial_padding`): the model's own word, if any, ends first."""
    pads_after_word: int = 2
    """PADs after each word (~2 per piece is a natural pace for Moshi; 0 speaks a piece per 80 ms)."""
    tail_pads: int = 4
    """PADs after the last word (TTS `final_padding`), so its audio is out when the script is done."""


@dataclass(frozen=True)
class ScriptStep:
    token: int
    text: str | None
    """The script's text this step speaks (a piece with its leading space); None for PADs and markers."""


@dataclass(frozen=True)
class ScriptStatus:
    """What the script did at the step whose text a frame carries."""

    text: str | None
    done: bool
    """This was the script's last step."""


def script_steps(
    tokenizer: Any, text: str, *, pad: int, word_start: int, pacing: ScriptPacing = ScriptPacing()
) -> list[ScriptStep]:
    """The forced steps for `text` with the model's sentencepiece `tokenizer` (ids it cannot speak — unknown
    or control pieces — are not forced; their text goes with the piece before, or the next one)."""
    data = text.encode("utf-8")
    pieces = list(tokenizer.encode(text, out_type="proto").pieces) if text else []
    words: list[list[ScriptStep]] = []
    carry = b""
    for index, piece in enumerate(pieces):
        start = 0 if index == 0 else piece.begin
        end = pieces[index + 1].begin if index + 1 < len(pieces) else len(data)
        span = carry + data[start:end]
        token = int(piece.id)
        speakable = not (
            tokenizer.is_unknown(token) or tokenizer.is_control(token) or tokenizer.is_unused(token)
        )
        try:
            decoded = span.decode("utf-8")
        except UnicodeDecodeError:  # a byte-fallback piece inside a character: wait for the rest
            carry = span
            continue
        if not speakable:
            if words:
                last = words[-1][-1]
                words[-1][-1] = ScriptStep(last.token, (last.text or "") + decoded)
                carry = b""
            else:
                carry = span
            continue
        carry = b""
        if not words or str(piece.piece).startswith("▁"):
            words.append([])
        words[-1].append(ScriptStep(token, decoded))
    leftover = carry.decode("utf-8", errors="replace")
    steps = [ScriptStep(pad, None)] * pacing.lead_pads
    for word in words:
        steps += [ScriptStep(word_start, None), *word, *[ScriptStep(pad, None)] * pacing.pads_after_word]
    steps += [ScriptStep(pad, None)] * max(1, pacing.tail_pads)
    if leftover:  # nothing speakable after it: the text still reaches the transcript
        spoken = [i for i, s in enumerate(steps) if s.text is not None]
        at = spoken[-1] if spoken else 0
        steps[at] = ScriptStep(steps[at].token, (steps[at].text or "") + leftover)
    return steps


class ForcedText:
    """Per-slot scripts, applied as LMGen's `on_text_hook` on the engine's tick thread.

    The engine sets `active` (the rows stepping) before each step and calls `emitted(slot)` for every
    stepped slot after it: a frame's text was written `lag` steps before (LMGen's acoustic delay)."""

    def __init__(self, tokenizer: Any, *, slots: int, pad: int, word_start: int, lag: int) -> None:
        self._tokenizer, self._pad, self._word_start, self._lag = tokenizer, pad, word_start, lag
        self.hold = False
        """Force PAD into every stepping row without a script (delegate mode: no words of its own); set
        before the first tick (serve_app/engine/startup.py, from `ModelConfig.holds_text`)."""
        self._scripts: dict[int, deque[ScriptStep]] = {}
        self._in_flight: dict[int, deque[ScriptStatus | None]] = {}
        self._lock = threading.Lock()
        self.active: npt.NDArray[np.bool_] = np.zeros(slots, bool)
        self.pacing = ScriptPacing()

    @classmethod
    def for_model(cls, lm: Any, tokenizer: Any, slots: int) -> ForcedText:
        """Moshi's PAD and end-of-padding ids; its text is output `max delay - text delay` steps later."""
        return cls(
            tokenizer,
            slots=slots,
            pad=int(lm.text_padding_token_id),
            word_start=int(lm.end_of_text_padding_id),
            lag=max(lm.delays) - lm.delays[0],
        )

    def start(self, slot: int, text: str) -> int:
        """Force `text` into the slot's stream from its next step (replacing any script); returns steps."""
        steps = script_steps(
            self._tokenizer, text, pad=self._pad, word_start=self._word_start, pacing=self.pacing
        )
        with self._lock:
            self._scripts[slot] = deque(steps)
            self._in_flight.setdefault(slot, deque())
        return len(steps)

    def cancel(self, slot: int) -> bool:
        """Stop forcing (nothing more of the script is reported either); True if a script was running."""
        with self._lock:
            running = self._scripts.pop(slot, None) is not None
            in_flight = self._in_flight.pop(slot, None)
        return running or bool(in_flight and any(s is not None for s in in_flight))

    def running(self, slot: int) -> bool:
        with self._lock:
            return slot in self._scripts

    def __call__(self, text_token: torch.Tensor) -> None:
        """LMGen's on_text_hook: overwrite the sampled token of every stepping row with a script (and, when
        held, of every other stepping row with PAD)."""
        if not self._in_flight and not self.hold:
            return
        rows: list[int] = []
        tokens: list[int] = []
        with self._lock:
            for slot, flight in self._in_flight.items():
                if not self.active[slot]:
                    continue
                script = self._scripts.get(slot)
                if not script:
                    flight.append(None)
                    continue
                step = script.popleft()
                rows.append(slot)
                tokens.append(step.token)
                flight.append(ScriptStatus(step.text, done=not script))
                if not script:
                    del self._scripts[slot]
            if self.hold:  # nothing reported for these steps: their frames stay unscripted
                scripted = set(rows)
                held = [int(s) for s in np.flatnonzero(self.active) if int(s) not in scripted]
                rows += held
                tokens += [self._pad] * len(held)
        if rows:
            index = torch.tensor(rows, device=text_token.device)
            text_token.index_copy_(
                0, index, torch.tensor(tokens, device=text_token.device, dtype=text_token.dtype)
            )

    def emitted(self, slot: int) -> ScriptStatus | None:
        """After a step of `slot`: the script status of the step whose text its frame carries (None when
        that step was not scripted)."""
        with self._lock:
            flight = self._in_flight.get(slot)
            if flight is None or len(flight) <= self._lag:
                return None
            status = flight.popleft()
            if slot not in self._scripts and all(s is None for s in flight):
                del self._in_flight[slot]
            return status
