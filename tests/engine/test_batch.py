import threading
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.batch import BatchedEngine, NoFreeSlot, text_pieces
from serve_app.engine.loader import LoadedModel
from serve_app.engine.single import SingleStream
from serve_app.engine.spec import SamplingParams
from tests.engine.support import noise

GREEDY = SamplingParams(use_sampling=False)


@dataclass
class Session:
    """A scripted session: when it opens, what it pushes at which tick (any chunk size), when it closes."""

    name: str
    audio: npt.NDArray[np.float32]
    opens_at: int
    pushes: dict[int, tuple[int, int]]  # tick -> sample range pushed before that tick
    closes_at: int | None = None
    slot: int | None = None
    tokens: list[npt.NDArray[np.int64]] = field(default_factory=list)
    pcm: list[npt.NDArray[np.float32]] = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)


def _sessions() -> list[Session]:
    f = FRAME_SAMPLES
    a, b, c, d, e, g = (noise(frames, seed) for seed, frames in enumerate((14, 10, 12, 8, 10, 9)))
    trickle = {
        tick: (1000 * (tick - 1), min(1000 * tick, b.size)) for tick in range(1, 1 + -(-b.size // 1000))
    }
    return [
        Session("A: all at once", a, 0, {0: (0, a.size)}, closes_at=16),
        Session("B: trickles in 1000-sample chunks (paused on most ticks)", b, 1, trickle),
        Session("C: pauses for 4 ticks mid-stream", c, 3, {3: (0, 5 * f), 12: (5 * f, c.size)}),
        Session("D: leaves early", d, 5, {5: (0, d.size)}, closes_at=14),
        Session("E: reuses a freed slot", e, 15, {15: (0, 3 * f + 7), 17: (3 * f + 7, e.size)}),
        Session("F: reuses a freed slot, closed mid-stream", g, 18, {18: (0, g.size)}, closes_at=24),
    ]


def _run_alone(
    model: LoadedModel, sessions: list[Session]
) -> dict[str, list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]]:
    reference = {}
    with SingleStream(model, GREEDY) as stream:
        for session in sessions:
            stream.reset()
            frames = session.audio.reshape(-1, FRAME_SAMPLES)
            reference[session.name] = [out for out in map(stream.step, frames) if out is not None]
    return reference


def test_sessions_match_running_alone(tiny_model: LoadedModel) -> None:
    """≥4 slots, sessions joining/leaving at different ticks, pauses, a reused slot: every session's text
    tokens, audio codes and pcm equal moshi's plain batch-1 loop on the same input."""
    sessions = _sessions()
    reference = _run_alone(tiny_model, sessions)
    reused: set[int] = set()
    with BatchedEngine(tiny_model, slots=4, sampling=GREEDY) as engine:
        engine.warmup()
        assert engine.ready
        for tick in range(40):
            for session in sessions:
                if session.closes_at == tick and session.slot is not None:
                    engine.close_slot(session.slot)
                if session.opens_at == tick:
                    session.slot = engine.open_slot()
                    if any(other.slot == session.slot for other in sessions if other is not session):
                        reused.add(session.slot)
                if tick in session.pushes:
                    start, end = session.pushes[tick]
                    assert session.slot is not None
                    engine.push(session.slot, session.audio[start:end])
            frames = engine.tick()
            for session in sessions:
                live = session.slot is not None and (session.closes_at is None or tick < session.closes_at)
                if live and session.slot in frames:
                    frame = frames[session.slot]
                    session.tokens.append(engine.last_tokens[session.slot])
                    session.pcm.append(frame.pcm)
                    session.texts.append(frame.text)
            assert set(frames) <= {s.slot for s in sessions if s.slot is not None}
    assert reused, "the schedule must reuse a slot"
    pieces = text_pieces(tiny_model.tokenizer, 129, {0, 3})
    for session in sessions:
        expected = reference[session.name]
        if session.closes_at is None:
            assert len(session.tokens) == len(expected), session.name
        else:
            assert 0 < len(session.tokens) <= len(expected), session.name
        for step, (tokens, pcm, text) in enumerate(
            zip(session.tokens, session.pcm, session.texts, strict=True)
        ):
            ref_tokens, ref_pcm = expected[step]
            np.testing.assert_array_equal(tokens, ref_tokens, err_msg=f"{session.name}, step {step}")
            np.testing.assert_allclose(pcm, ref_pcm, atol=1e-5, err_msg=f"{session.name}, step {step}")
            assert text == pieces[int(ref_tokens[0])]


def test_slots_fill_and_free(tiny_model: LoadedModel) -> None:
    with BatchedEngine(tiny_model, slots=2, sampling=GREEDY) as engine:
        assert (engine.slots_total, engine.slots_used) == (2, 0)
        first, second = engine.open_slot(), engine.open_slot()
        assert {first, second} == {0, 1} and engine.slots_used == 2
        with pytest.raises(NoFreeSlot):
            engine.open_slot()
        engine.close_slot(first)
        engine.close_slot(first)  # idempotent
        assert engine.slots_used == 1 and engine.open_slot() == first


def test_push_frames_any_length_and_validates(tiny_model: LoadedModel) -> None:
    with BatchedEngine(tiny_model, slots=2, sampling=GREEDY) as engine:
        slot = engine.open_slot()
        engine.push(slot, np.zeros(1000, np.float32))
        assert engine.queued_frames(slot) == 0
        engine.push(slot, np.zeros(3000, np.float32))
        assert engine.queued_frames(slot) == 2  # 4000 samples: two frames, 160 left over
        with pytest.raises(ValueError, match="mono"):
            engine.push(slot, np.zeros((2, 100), np.float32))
        with pytest.raises(ValueError, match="not open"):
            engine.push(1, np.zeros(10, np.float32))
        with pytest.raises(ValueError, match="no slot 7"):
            engine.push(7, np.zeros(10, np.float32))
        engine.close_slot(slot)
        assert engine.open_slot() == slot and engine.queued_frames(slot) == 0  # buffers do not leak across


def test_tick_without_frames_steps_nothing(tiny_model: LoadedModel) -> None:
    with BatchedEngine(tiny_model, slots=2, sampling=GREEDY) as engine:
        assert engine.tick() == {}
        slot = engine.open_slot()
        assert engine.tick() == {}  # open but nothing queued: paused, not fed silence
        engine.push(slot, noise(3, seed=0))
        assert engine.tick() == {}  # a session's first step yields nothing (acoustic delay)
        out = engine.tick()
        assert (
            set(out) == {slot}
            and out[slot].pcm.shape == (FRAME_SAMPLES,)
            and out[slot].pcm.dtype == np.float32
        )


def test_text_pieces(tiny_model: LoadedModel) -> None:
    tokenizer = tiny_model.tokenizer
    pieces = text_pieces(tokenizer, 130, {0, 3})
    assert pieces[0] is None and pieces[1] is None and pieces[2] is None and pieces[3] is None
    assert pieces[128] is None and pieces[129] is None  # beyond the tokenizer
    spaced = [i for i in range(4, 128) if tokenizer.id_to_piece(i).startswith("▁")]
    assert spaced and all(pieces[i] == " " + tokenizer.id_to_piece(i)[1:] for i in spaced)


def test_warmup_needs_idle_engine(tiny_model: LoadedModel) -> None:
    with BatchedEngine(tiny_model, slots=1, sampling=GREEDY) as engine:
        engine.open_slot()
        with pytest.raises(RuntimeError, match="idle"):
            engine.warmup()
        assert not engine.ready


def test_push_from_another_thread_while_ticking(tiny_model: LoadedModel) -> None:
    audio = noise(12, seed=9)
    with BatchedEngine(tiny_model, slots=2, sampling=GREEDY) as engine:
        slot = engine.open_slot()
        produced = 0

        def feed() -> None:
            for start in range(0, audio.size, 700):
                engine.push(slot, audio[start : start + 700])

        feeder = threading.Thread(target=feed)
        feeder.start()
        deadline = time.monotonic() + 30
        while produced < 11 and time.monotonic() < deadline:
            produced += len(engine.tick())
        feeder.join()
        for _ in range(3):
            produced += len(engine.tick())
        assert produced == 11  # every frame stepped exactly once, none invented


def test_no_memory_growth_over_500_ticks(tiny_model: LoadedModel) -> None:
    """Streaming state is preallocated and nothing builds autograd history: RSS stays flat at B=4."""
    psutil = pytest.importorskip("psutil")
    import gc

    process = psutil.Process()
    pool = noise(16, seed=4).reshape(16, FRAME_SAMPLES)
    with BatchedEngine(tiny_model, slots=4, sampling=SamplingParams()) as engine:
        engine.warmup()
        slots = [engine.open_slot() for _ in range(4)]

        def run(ticks: int, offset: int) -> None:
            for tick in range(offset, offset + ticks):
                if tick % 100 == 99:  # sessions come and go, as in service
                    victim = slots[(tick // 100) % 4]
                    engine.close_slot(victim)
                    assert engine.open_slot() == victim
                for index, slot in enumerate(slots):
                    engine.push(slot, pool[(tick + index) % len(pool)])
                engine.tick()

        run(60, 0)
        gc.collect()
        before = process.memory_info().rss
        run(500, 60)
        gc.collect()
        growth_mb = (process.memory_info().rss - before) / 2**20
    assert growth_mb < 50, f"RSS grew by {growth_mb:.1f} MB over 500 ticks"


def test_failed_construction_leaves_the_model_usable(
    tiny_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """E.g. out of memory while allocating a big batch's KV caches: the next engine must still start."""
    from moshi.modules.transformer import StreamingMultiheadAttention

    def out_of_memory(self: StreamingMultiheadAttention, batch_size: int) -> None:
        raise MemoryError("no room for the KV cache")

    with monkeypatch.context() as patch:  # fails half-way: Mimi and part of the LM already streaming
        patch.setattr(StreamingMultiheadAttention, "_init_streaming_state", out_of_memory)
        with pytest.raises(MemoryError):
            BatchedEngine(tiny_model, slots=64, sampling=GREEDY)
    with BatchedEngine(tiny_model, slots=2, sampling=GREEDY) as engine:
        slot = engine.open_slot()
        engine.push(slot, noise(2, seed=0))
        engine.tick()
        assert slot in engine.tick()
