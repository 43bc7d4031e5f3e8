"""Delegate mode: a held model's own text stays at padding (no words, no `speaking`), while a script on it is
spoken exactly as on any model, and the text is held again after it (tiny checkpoint, sampled: greedy, it
only pads anyway; every engine reseeds, so held and unheld runs draw alike)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt

from serve_app.delegate.config import DelegateConfig
from serve_app.engine.batch import BatchedEngine
from serve_app.engine.loader import LoadedModel
from serve_app.engine.port import EngineFrame
from serve_app.engine.spec import ModelConfig, ModelSpec, SamplingParams
from serve_app.engine.startup import start_runner
from tests.engine.support import noise

SAMPLED = SamplingParams(seed=7)
TEXT = "hello there, this is a scripted greeting"
FRAMES = 60


def _run(
    model: LoadedModel, *, hold: bool, script_at: int | None = None, frames: int = FRAMES
) -> tuple[list[EngineFrame], list[npt.NDArray[np.int64]], list[EngineFrame]]:
    """Slot 1 steps on speech-like input (slot 0 beside it too); a script starts on slot 1 at `script_at`.
    Returns slot 1's frames and tokens, and slot 0's frames."""
    own: list[EngineFrame] = []
    tokens: list[npt.NDArray[np.int64]] = []
    beside_frames: list[EngineFrame] = []
    with BatchedEngine(model, slots=2, sampling=SAMPLED) as engine:
        engine.scripts.hold = hold
        beside, slot = engine.open_slot(), engine.open_slot()
        engine.push(beside, noise(frames, seed=8))
        engine.push(slot, noise(frames, seed=9))
        for index in range(frames):
            if index == script_at:
                engine.scripts.start(slot, TEXT)
            produced = engine.tick()
            if beside in produced:
                beside_frames.append(produced[beside])
            if slot in produced:
                own.append(produced[slot])
                tokens.append(engine.last_tokens[slot].copy())
    return own, tokens, beside_frames


def test_held_model_says_no_words_of_its_own(tiny_model: LoadedModel) -> None:
    free, _, free_beside = _run(tiny_model, hold=False)
    held, tokens, held_beside = _run(tiny_model, hold=True)
    # Unheld, the same model on the same input (same seed) talks.
    assert sum(f.text is not None for f in free) > 0 and any(f.speaking for f in free)
    assert len(held) == len(free) > 50
    for frames in (held, held_beside):  # every stepping row is held, not only one
        assert all(f.text is None and not f.speaking and not f.scripted for f in frames)
    pad = int(tiny_model.lm.text_padding_token_id)
    assert {int(t[0]) for t in tokens} == {pad}  # really forced into the stream, not only unreported
    assert all(f.pcm.size for f in held)  # it still produces audio: it listens, it is not muted
    assert any(f.text is not None for f in free_beside)


def test_script_on_a_held_model_is_spoken_verbatim_then_held_again(tiny_model: LoadedModel) -> None:
    frames, tokens, _ = _run(tiny_model, hold=True, script_at=5, frames=FRAMES + 40)
    scripted = [i for i, f in enumerate(frames) if f.scripted]
    assert scripted == list(range(scripted[0], scripted[-1] + 1))  # every step of it, in a row
    assert "".join(frames[i].text for i in scripted if frames[i].text is not None) == TEXT  # type: ignore[misc]
    assert [i for i, f in enumerate(frames) if f.script_done] == [scripted[-1]]
    assert any(frames[i].speaking for i in scripted)
    before, after = frames[: scripted[0]], frames[scripted[-1] + 1 :]
    assert len(after) > 20
    for frame in (*before, *after):
        assert frame.text is None and not frame.speaking and not frame.scripted
    pad = int(tiny_model.lm.text_padding_token_id)
    assert all(int(t[0]) == pad for t in tokens[scripted[-1] + 1 :])


def test_a_model_in_delegate_mode_is_started_held(tiny_dir: Path) -> None:
    """`mode: delegate` reaches the engine the replica starts: its slots say nothing of their own."""
    delegate = DelegateConfig(base_url="http://127.0.0.1:9/v1", model="chat", mode="delegate")
    spec = ModelSpec(local_dir=tiny_dir, device="cpu")
    config = ModelConfig(id="held", spec=spec, slots=1, sampling=SAMPLED, delegate=delegate)
    duplex = config.model_copy(update={"delegate": delegate.model_copy(update={"mode": "duplex"})})
    assert config.runner_options()["hold_text"] and not duplex.runner_options()["hold_text"]
    frames: list[EngineFrame] = []
    enough = threading.Event()

    def on_frame(frame: EngineFrame) -> None:
        frames.append(frame)
        if len(frames) >= 40:
            enough.set()

    runner = start_runner(**config.runner_options())
    try:
        slot = runner.open_slot(on_frame)
        runner.push(slot, noise(50, seed=9))
        assert enough.wait(30)
    finally:
        runner.stop()
    assert all(f.text is None and not f.speaking for f in frames)
