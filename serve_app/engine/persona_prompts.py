"""A slot's persona, made into the prompt its engine prefills (PersonaPlex: serve_app/engine/prompt.py).

Built once per replica from the loaded model; the runner asks it for each session's plan on its clock
thread (serve_app/engine/runner.py `set_persona`), where the prefill then runs between ticks.
"""

from __future__ import annotations

from serve_app.engine.loader import LoadedModel
from serve_app.engine.port import Persona
from serve_app.engine.prompt import PromptPlan, persona_plan

__all__ = ["PersonaPrompts"]


class PersonaPrompts:
    """The prompt plans of one loaded PersonaPlex model (one with voice prompts)."""

    def __init__(self, model: LoadedModel, model_key: str) -> None:
        if not model.voices:
            raise ValueError(f"{model.source}: a model without voice prompts takes no persona")
        self._model = model
        self._key = model_key
        """Names the model in the engine's prompt cache keys (the cache is the engine's own)."""
        self.voices = tuple(sorted(model.voices))

    @classmethod
    def of(cls, model: LoadedModel, model_key: str) -> PersonaPrompts | None:
        """The model's prompts, None for a model without a prompt channel (stock Moshi, STT)."""
        return cls(model, model_key) if model.voices else None

    def plan(self, persona: Persona) -> PromptPlan:
        """The prompt of `persona` (KeyError names an unknown voice; ValueError: it does not fit the LM)."""
        model = self._model
        return persona_plan(
            model.lm,
            model.tokenizer,
            model.voices,
            voice=persona.voice,
            instructions=persona.instructions,
            model_key=self._key,
        )
