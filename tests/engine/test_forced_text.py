"""Scripted speech: a slot's script is forced into Moshi's text stream, paced with pauses between words,
reported piece by piece so the pieces join to exactly the script; a cancel stops it; the slot beside it
does not notice (greedy, tiny checkpoints)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from serve_app.engine.batch import BatchedEngine
from serve_app.engine.forced_text import ScriptPacing, script_steps
from serve_app.engine.loader import LoadedModel
from serve_app.engine.port import EngineFrame
from serve_app.engine.spec import SamplingParams
from tests.engine.support import noise

GREEDY = SamplingParams(use_sampling=False)
TEXT = "hello there, this is a scripted greeting"


def test_script_steps_join_to_the_text_and_pause_between_words(tiny_model: LoadedModel) -> None:
    tokenizer = tiny_model.tokenizer
    pacing = ScriptPacing(lead_pads=2, pads_after_word=2, tail_pads=4)
    steps = script_steps(tokenizer, TEXT, pad=3, word_start=0, pacing=pacing)
    assert "".join(s.text for s in steps if s.text is not None) == TEXT
    spoken = [s for s in steps if s.text is not None]
    # The tiny tokenizer has no ",": its unknown piece is not forced, its text rides on the piece before.
    assert all(not tokenizer.is_unknown(s.token) for s in spoken)
    assert any(s.text.endswith(",") for s in spoken)  # type: ignore[union-attr]
    words = len(TEXT.split())
    assert len(steps) == 2 + len(spoken) + words * (1 + 2) + 4
    assert [s.token for s in steps[:3]] == [3, 3, 0]  # lead pads, then the end-of-padding marker
    assert all(s.token == 3 and s.text is None for s in steps[-4:])
    assert script_steps(tokenizer, "", pad=3, word_start=0) == script_steps(
        tokenizer, "", pad=3, word_start=0
    )


def test_unspeakable_text_still_reaches_the_transcript(tiny_model: LoadedModel) -> None:
    steps = script_steps(tiny_model.tokenizer, "¿!", pad=3, word_start=0)
    assert "".join(s.text for s in steps if s.text is not None) == "¿!"


def _session(
    model: LoadedModel, *, script: str | None, cancel_after: int | None = None, frames: int = 90
) -> tuple[list[EngineFrame], list[npt.NDArray[np.int64]], list[npt.NDArray[np.int64]], int]:
    """Slot 0 streams noise (its neighbour); slot 1 gets `script` after 5 frames. Returns slot 1's frames
    and tokens, the neighbour's tokens, and the script's steps."""
    scripted: list[EngineFrame] = []
    tokens: list[npt.NDArray[np.int64]] = []
    neighbour: list[npt.NDArray[np.int64]] = []
    steps = 0
    with BatchedEngine(model, slots=2, sampling=GREEDY) as engine:
        beside, slot = engine.open_slot(), engine.open_slot()
        engine.push(beside, noise(frames, seed=8))
        engine.push(slot, noise(frames, seed=9))
        for index in range(frames):
            if index == 5 and script is not None:
                steps = engine.scripts.start(slot, script)
            if cancel_after is not None and index == 5 + cancel_after:
                assert engine.scripts.cancel(slot)
                assert not engine.scripts.running(slot)
            produced = engine.tick()
            if beside in produced:
                neighbour.append(engine.last_tokens[beside].copy())
            if slot in produced:
                scripted.append(produced[slot])
                tokens.append(engine.last_tokens[slot].copy())
    return scripted, tokens, neighbour, steps


@pytest.mark.parametrize("model_name", ["tiny_model", "tiny_persona"])
def test_forced_script_is_spoken_exactly_and_paced(model_name: str, request: pytest.FixtureRequest) -> None:
    model: LoadedModel = request.getfixturevalue(model_name)
    frames, tokens, neighbour, steps = _session(model, script=TEXT)
    scripted = [i for i, f in enumerate(frames) if f.scripted]
    assert scripted == list(range(scripted[0], scripted[0] + steps))  # every step of it, in a row
    pieces = [frames[i].text for i in scripted if frames[i].text is not None]
    assert "".join(pieces) == TEXT  # type: ignore[arg-type]
    assert steps > len(pieces) + len(TEXT.split())  # paced: pauses between words, not a piece per frame
    assert [i for i, f in enumerate(frames) if f.script_done] == [scripted[-1]]
    # Really forced into the stream: each frame's text token is the script's token for that step.
    expected = [s.token for s in script_steps(model.tokenizer, TEXT, pad=3, word_start=0)]
    assert [int(tokens[i][0]) for i in scripted] == expected
    assert all(frames[i].speaking == (frames[i].text is not None) for i in scripted)
    # The neighbour: bit-identical to the same session without a scripted slot beside it.
    _, _, alone, _ = _session(model, script=None)
    assert len(neighbour) == len(alone) > 80
    for got, want in zip(neighbour, alone, strict=True):
        np.testing.assert_array_equal(got, want)


def test_cancel_clears_the_script(tiny_model: LoadedModel) -> None:
    frames, tokens, _, _ = _session(tiny_model, script=TEXT, cancel_after=12)
    full, full_tokens, _, _ = _session(tiny_model, script=TEXT)
    scripted = [i for i, f in enumerate(frames) if f.scripted]
    assert 0 < len(scripted) < 12 and not any(f.script_done for f in frames)
    after = scripted[-1] + 1
    assert not any(f.scripted for f in frames[after:])
    # From the cancel on the stream is the model's own, not the script's continuation.
    assert any(int(a[0]) != int(b[0]) for a, b in zip(tokens[after:], full_tokens[after:], strict=False))
    assert "".join(f.text for f in full if f.scripted and f.text is not None).startswith(
        "".join(f.text for f in frames if f.scripted and f.text is not None)
    )
