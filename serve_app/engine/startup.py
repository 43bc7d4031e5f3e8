"""Load, size, warm up and start one model's clocked runner: what a replica (or a test server) does first."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from serve_app.engine.batch import BatchedEngine
from serve_app.engine.capacity import DEFAULT_ADMIT_FRACTION, TickBudget
from serve_app.engine.lag_limit import DEFAULT_MAX_LAG_S
from serve_app.engine.loader import CheckpointError, load_model
from serve_app.engine.persona_prompts import PersonaPrompts
from serve_app.engine.runner import ClockedRunner
from serve_app.engine.sizing import resolve_slots
from serve_app.engine.spec import ModelSpec, SamplingParams
from serve_app.engine.tick_stats import TickStats
from serve_app.heap import freeze_heap

logger = logging.getLogger(__name__)


def start_runner(
    spec: ModelSpec,
    *,
    slots: int | Literal["auto"],
    max_slots: int,
    sampling: SamplingParams,
    model_id: str = "",
    on_tick: Callable[[TickStats], None] | None = None,
    max_lag_s: float | None = DEFAULT_MAX_LAG_S,
    admit_fraction: float | None = DEFAULT_ADMIT_FRACTION,
    cpu_share: float | None = None,
    text_only: bool = False,
    hold_text: bool = False,
) -> ClockedRunner:
    """Blocking: seconds on CPU, minutes for the 7B model on a GPU. Raises CheckpointError for a bad
    checkpoint (or one of the wrong kind: `text_only` asks for a streaming recogniser such as Kyutai STT,
    otherwise a Moshi that speaks) and SlotsDoNotFit when a fixed `slots` cannot fit the accelerator's
    memory. `hold_text` (delegate mode) keeps Moshi's own text at padding: it says only its scripts."""
    model = load_model(spec)
    if model.text_only != text_only:
        wanted = "a text-only STT checkpoint (dep_q 0)" if text_only else "a Moshi checkpoint that speaks"
        raise CheckpointError(
            f"{model.source}: {model_id or 'this model'} needs {wanted}, but its config.json has "
            f"model_type={model.model_type!r}, dep_q={model.lm.dep_q}"
        )
    if spec.persona != bool(model.voices):
        # The ingress judges sessions' voices by the configuration (serve_app/config.py ModelTraits).
        raise CheckpointError(
            f"{model.source}: {model_id or 'this model'} is configured as "
            f"{'a PersonaPlex' if spec.persona else 'a'} model (spec.model_type), but the checkpoint "
            f"{'has no' if spec.persona else 'has'} voice prompts (config.json model_type="
            f"{model.model_type!r})"
        )
    count = resolve_slots(model, slots, max_slots, sampling, model_id=model_id or None, cpu_share=cpu_share)
    engine = BatchedEngine(model, slots=count, sampling=sampling)
    engine.scripts.hold = hold_text
    engine.warmup()
    runner = ClockedRunner(
        engine,
        on_tick=on_tick,
        max_lag_s=max_lag_s,
        budget=TickBudget(count, admit_fraction=admit_fraction),
        prompts=PersonaPrompts.of(model, model_id or model.source),
    )
    runner.start()
    freeze_heap()
    logger.info("model ready", extra={"model": model_id, "slots": count})
    return runner
