"""A session stepped on one engine, rebuilt into a slot of another from its kept history, continues as if
never interrupted, and the sessions beside it do not notice (greedy, tiny checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.batch import BatchedEngine
from serve_app.engine.history import ResumeWindow, SessionHistory
from serve_app.engine.loader import LoadedModel
from serve_app.engine.rebuild import history_spec, rebuild_inputs
from serve_app.engine.spec import SamplingParams
from tests.engine.support import noise

GREEDY = SamplingParams(use_sampling=False)
AFTER = 100
"""Frames compared after the rebuild (the acceptance figure is over the next 100)."""


@dataclass
class Output:
    tokens: list[npt.NDArray[np.int64]] = field(default_factory=list)
    pcm: list[npt.NDArray[np.float32]] = field(default_factory=list)

    def take(self, engine: BatchedEngine, frames: dict[int, object], slot: int) -> None:
        if slot in engine.last_tokens:
            self.tokens.append(engine.last_tokens[slot].copy())
            frame = frames[slot]
            self.pcm.append(frame.pcm.copy())  # type: ignore[attr-defined]


def _alone(model: LoadedModel, audio: npt.NDArray[np.float32], frames: int) -> Output:
    out = Output()
    with BatchedEngine(model, slots=2, sampling=GREEDY) as engine:
        slot = engine.open_slot()
        engine.push(slot, audio[: frames * FRAME_SAMPLES])
        for _ in range(frames):
            out.take(engine, engine.tick(), slot)
    return out


def _history_after(
    model: LoadedModel, audio: npt.NDArray[np.float32], frames: int
) -> tuple[Output, ResumeWindow]:
    """Step a session for `frames` frames, keeping its history as the ingress does; all later input is
    sent but never stepped (the replica went away)."""
    out = Output()
    with BatchedEngine(model, slots=2, sampling=GREEDY) as engine:
        assert engine.history_spec is not None
        history = SessionHistory(engine.history_spec)
        slot = engine.open_slot()
        history.add_input(audio[: frames * FRAME_SAMPLES], now=0.0)
        engine.push(slot, audio[: frames * FRAME_SAMPLES])
        for _ in range(frames):
            produced = engine.tick()
            if slot in produced:
                history.add_records(produced[slot].history)
            out.take(engine, produced, slot)
        history.add_input(audio[frames * FRAME_SAMPLES :], now=0.0)
    return out, history.window(now=0.0)


@pytest.mark.parametrize("stepped", [40, 300])
def test_a_rebuilt_slot_continues_the_uninterrupted_session(tiny_model: LoadedModel, stepped: int) -> None:
    """300 frames (24 s) is past Mimi's 10 s context, so its window is a suffix of the session."""
    moved_audio = noise(stepped + AFTER, seed=7)
    neighbour_audio = noise(stepped + AFTER + 60, seed=8)
    reference = _alone(tiny_model, moved_audio, stepped + AFTER)
    neighbour_reference = _alone(tiny_model, neighbour_audio, stepped + AFTER + 60)
    before, window = _history_after(tiny_model, moved_audio, stepped)
    assert window.steps == stepped and len(window.records) == stepped
    assert window.pending.size == AFTER * FRAME_SAMPLES

    neighbour, moved = Output(), Output()
    with BatchedEngine(tiny_model, slots=2, sampling=GREEDY) as engine:
        beside = engine.open_slot()
        engine.push(beside, neighbour_audio)
        for _ in range(30):
            neighbour.take(engine, engine.tick(), beside)
        slot = engine.open_slot(resume=window)
        engine.push(slot, window.pending)
        chunks = 0
        while engine.rebuilding:  # the neighbour keeps stepping between the rebuild's chunks
            produced = engine.tick()
            neighbour.take(engine, produced, beside)
            assert slot not in produced
            engine.rebuild_step()
            chunks += 1
        assert chunks > 2
        while len(moved.tokens) < len(reference.tokens) - len(before.tokens):
            produced = engine.tick()
            neighbour.take(engine, produced, beside)
            moved.take(engine, produced, slot)

    expected = reference.tokens[len(before.tokens) :]
    assert len(moved.tokens) == len(expected) == AFTER
    same = [np.array_equal(a, b) for a, b in zip(expected, moved.tokens, strict=True)]
    agreement = sum(same) / len(same)
    print(f"after {stepped} frames: {100 * agreement:.0f} % of the next {AFTER} frames' tokens identical")
    assert agreement >= 0.95
    pcm_error = np.abs(np.concatenate(reference.pcm[len(before.tokens) :]) - np.concatenate(moved.pcm)).max()
    print(f"largest output sample difference: {pcm_error:.2e}")
    assert pcm_error < 1e-3  # the decoder's state was rebuilt too: same sound, to float rounding

    # The session beside it: bit-identical to stepping alone.
    assert len(neighbour.tokens) > 100
    for got, want in zip(neighbour.tokens, neighbour_reference.tokens, strict=False):
        np.testing.assert_array_equal(got, want)
    for got_pcm, want_pcm in zip(neighbour.pcm, neighbour_reference.pcm, strict=False):
        np.testing.assert_array_equal(got_pcm, want_pcm)


def test_without_the_rebuild_the_continuation_differs(tiny_model: LoadedModel) -> None:
    """The agreement above is the rebuild's doing: a fresh slot fed the same input goes elsewhere."""
    audio = noise(40 + AFTER, seed=7)
    reference = _alone(tiny_model, audio, 40 + AFTER)
    before, window = _history_after(tiny_model, audio, 40)
    fresh = _alone(tiny_model, window.pending, AFTER)
    expected = reference.tokens[len(before.tokens) :]
    same = [np.array_equal(a, b) for a, b in zip(expected, fresh.tokens, strict=False)]
    assert sum(same) / len(same) < 0.5


def test_closing_a_slot_mid_rebuild_leaves_the_engine_serving(tiny_model: LoadedModel) -> None:
    audio = noise(60, seed=3)
    _, window = _history_after(tiny_model, audio, 60)
    reference = _alone(tiny_model, audio, 20)
    with BatchedEngine(tiny_model, slots=2, sampling=GREEDY) as engine:
        slot = engine.open_slot(resume=window)
        engine.rebuild_step()  # the scratch state exists
        assert engine.rebuilding
        engine.close_slot(slot)
        engine.rebuild_step()  # drops it
        assert not engine.rebuilding
        again = engine.open_slot()
        engine.push(again, audio[: 20 * FRAME_SAMPLES])
        out = Output()
        for _ in range(20):
            out.take(engine, engine.tick(), again)
    for got, want in zip(out.tokens, reference.tokens, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_session_that_never_stepped_resumes_as_a_fresh_one(tiny_model: LoadedModel) -> None:
    audio = noise(12, seed=5)
    reference = _alone(tiny_model, audio, 12)
    empty = ResumeWindow(0, np.zeros((0, 17), np.int32), np.zeros(0, np.float32), audio, 0.0)
    with BatchedEngine(tiny_model, slots=1, sampling=GREEDY) as engine:
        slot = engine.open_slot(resume=empty)
        assert not engine.rebuilding
        engine.push(slot, empty.pending)
        out = Output()
        for _ in range(12):
            out.take(engine, engine.tick(), slot)
    for got, want in zip(out.tokens, reference.tokens, strict=True):
        np.testing.assert_array_equal(got, want)


def test_every_frame_carries_the_records_of_its_steps(tiny_model: LoadedModel) -> None:
    """One record per stepped frame, K integers each: the first frame also carries the silent first step."""
    spec = history_spec(tiny_model)
    assert spec.record_width == tiny_model.lm.num_codebooks == 17
    assert spec.context_frames == 3000 and spec.audio_frames == 125
    with BatchedEngine(tiny_model, slots=1, sampling=GREEDY) as engine:
        slot = engine.open_slot()
        engine.push(slot, noise(10, seed=1))
        counts = [len(f.history) for f in (engine.tick().get(slot) for _ in range(10)) if f is not None]
    assert counts == [2] + [1] * 8  # step 0 has no output (the acoustic delay); 10 steps, 9 frames


def test_truncated_windows_feed_the_lm_the_same_tokens(tiny_model: LoadedModel) -> None:
    """With the history cut to its last steps, the LM's inputs are the tail of the full window's."""
    _, window = _history_after(tiny_model, noise(50, seed=2), 50)
    lm = tiny_model.lm
    spec = history_spec(tiny_model)
    kwargs = {
        "delays": list(lm.delays),
        "dep_q": lm.dep_q,
        "initial": lm._get_initial_token().reshape(-1).numpy(),
        "ungenerated": lm.ungenerated_token_id,
        "spec": spec,
    }
    full = rebuild_inputs(window, **kwargs)
    cut = ResumeWindow(window.steps, window.records[-20:], window.audio, window.pending, 0.0)
    tail = rebuild_inputs(cut, **kwargs)
    assert full.lm_inputs.shape[1] == 50
    assert tail.lm_inputs.shape[1] == 19  # the first kept step's inputs need the step before it
    np.testing.assert_array_equal(tail.lm_inputs, full.lm_inputs[:, -19:])
    np.testing.assert_array_equal(tail.ring, full.ring)
    np.testing.assert_array_equal(tail.decoder_codes, full.decoder_codes[:, -tail.decoder_codes.shape[1] :])
