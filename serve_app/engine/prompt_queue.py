"""Persona prompts asked for a slot and not yet started: the clock thread starts them before its next tick.

`ClockedRunner.set_persona` may be called from any thread, but a prompt's plan is built and its prefill
started on the clock thread (serve_app/engine/prompt.py), so that a slot never steps before its prompt is
in place. Until then the slot's input is held here, with when it arrived, and queued behind the prompt on
its real-time schedule. The queue is not thread-safe: the runner calls it under its lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from serve_app.engine.batch import BatchedEngine
from serve_app.engine.errors import RebuildFailed
from serve_app.engine.persona_prompts import PersonaPrompts
from serve_app.engine.port import Persona


@dataclass(eq=False)
class _PromptRequest:
    """A slot's persona, waiting for the clock thread; the input pushed meanwhile is held here."""

    persona: Persona
    held: list[tuple[npt.NDArray[np.float32], float]] = field(default_factory=list)
    """(pcm, when it arrived): queued behind the prompt, on its real-time schedule."""


class PromptQueue:
    """The slots whose persona the clock thread is still to start; their input is held until it has."""

    def __init__(self, engine: BatchedEngine, prompts: PersonaPrompts) -> None:
        self._engine = engine
        self._prompts = prompts
        self._pending: dict[int, _PromptRequest] = {}

    def ask(self, slot: int, persona: Persona) -> None:
        """Start `persona`'s prompt on `slot` before its next tick (replacing one not yet started)."""
        self._pending[slot] = _PromptRequest(persona)

    def hold(self, slot: int, pcm: npt.NDArray[np.float32], arrived: float) -> bool:
        """Keep the input of a slot waiting for its prompt (True); False: the slot is not waiting."""
        request = self._pending.get(slot)
        if request is None:
            return False
        request.held.append((pcm, arrived))
        return True

    def forget(self, slot: int) -> None:
        """The slot closed: its prompt (and held input) goes nowhere."""
        self._pending.pop(slot, None)

    def start(self, is_open: Callable[[int], bool], fail: Callable[[int, RebuildFailed], None]) -> None:
        """Clock thread, before a tick: build the plans asked for and start their prefills, then queue the
        input held meanwhile behind them. A slot no longer open (its tick failed) is skipped; one whose
        persona cannot be prompted (unknown voice, a slot that already stepped) is `fail`ed."""
        pending, self._pending = self._pending, {}
        for slot, request in pending.items():
            if not is_open(slot):
                continue
            try:
                self._engine.start_prompt(slot, self._prompts.plan(request.persona))
            except (KeyError, ValueError) as exc:
                detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
                fail(slot, RebuildFailed(slot, f"the persona prompt failed: {detail}"))
                continue
            for pcm, arrived in request.held:
                self._engine.push(slot, pcm, arrived)
