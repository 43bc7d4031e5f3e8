"""The history a session keeps to be rebuilt elsewhere: bounded, in order, split at what was stepped."""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.history import MAX_PENDING_S, HistoryLost, HistorySpec, SessionHistory
from serve_app.protocol.audio_stream import AudioDecoder
from serve_app.protocol.codecs import AudioFormat, encode_base64, pcm16_to_bytes

SMALL = HistorySpec(record_width=3, context_frames=5, audio_frames=2)
MOSHI = HistorySpec(record_width=17, context_frames=3000, audio_frames=125)


def frame(value: float) -> np.ndarray:
    return np.full(FRAME_SAMPLES, value, np.float32)


def records(first: int, count: int, width: int = 3) -> np.ndarray:
    return np.arange(first, first + count)[:, None].repeat(width, axis=1).astype(np.int32)


def test_the_window_holds_the_last_context_records_in_order() -> None:
    history = SessionHistory(SMALL)
    for step in range(8):
        history.add_input(frame(step / 10), now=float(step))
        history.add_records(records(step, 1))
    window = history.window(now=8.0)
    assert window.steps == 8
    np.testing.assert_array_equal(window.records[:, 0], [3, 4, 5, 6, 7])
    # The last two stepped frames of audio (PCM16 precision), nothing pending.
    np.testing.assert_allclose(window.audio, np.concatenate([frame(0.6), frame(0.7)]), atol=1 / 32768)
    assert window.pending.size == 0 and window.pending_age_s == 0.0


def test_a_rebuilt_slot_is_fed_bit_for_bit_the_pcm16_audio_the_live_slot_stepped() -> None:
    """Wire PCM16 → the float the live slot steps → the history's PCM16 → the float a rebuild steps: the
    same bits (one PCM16 scale in both layers; with 32767 in one and 32768 in the other they drifted)."""
    rng = np.random.default_rng(7)
    wire = rng.integers(-32768, 32768, 3 * FRAME_SAMPLES).astype(np.int16)
    wire[:4] = [-32768, 32767, 16384, -1]  # the extremes, and values the old 32767 scale moved
    stepped = AudioDecoder(AudioFormat.PCM16).decode(encode_base64(pcm16_to_bytes(wire)))
    history = SessionHistory(HistorySpec(record_width=3, context_frames=5, audio_frames=5))
    history.add_input(stepped[: 2 * FRAME_SAMPLES + 100], now=0.0)
    history.add_input(stepped[2 * FRAME_SAMPLES + 100 :], now=0.5)
    history.add_records(records(0, 2))
    window = history.window(now=1.0)
    assert window.audio.dtype == window.pending.dtype == np.float32
    assert window.audio.tobytes() == stepped[: 2 * FRAME_SAMPLES].tobytes()
    assert window.pending.tobytes() == stepped[2 * FRAME_SAMPLES :].tobytes()


def test_input_not_stepped_yet_is_pending_with_the_age_of_its_oldest_chunk() -> None:
    history = SessionHistory(SMALL)
    history.add_input(np.concatenate([frame(0.1), frame(0.2)]), now=1.0)
    history.add_records(records(0, 1))  # only the first frame was stepped
    history.add_input(frame(0.3)[:1000], now=1.5)
    window = history.window(now=4.0)
    assert window.steps == 1
    np.testing.assert_allclose(window.pending[:FRAME_SAMPLES], frame(0.2), atol=1 / 32768)
    assert window.pending.size == FRAME_SAMPLES + 1000
    # The chunk holding the first pending sample came at 1.0.
    assert window.pending_age_s == pytest.approx(3.0)
    history.add_records(records(1, 1))
    assert history.window(now=4.0).pending_age_s == pytest.approx(2.5)


def test_a_batch_of_records_longer_than_the_context_keeps_its_tail() -> None:
    history = SessionHistory(SMALL)
    history.add_input(np.zeros(9 * FRAME_SAMPLES, np.float32), now=0.0)
    history.add_records(records(0, 2))
    history.add_records(records(2, 7))
    window = history.window(now=0.0)
    assert window.steps == 9
    np.testing.assert_array_equal(window.records[:, 0], [4, 5, 6, 7, 8])


def test_a_replica_that_stops_stepping_for_long_makes_the_history_give_up() -> None:
    history = SessionHistory(SMALL)
    history.add_records(records(0, 0))
    history.add_input(np.zeros(int(MAX_PENDING_S * 24_000) + FRAME_SAMPLES, np.float32), now=0.0)
    with pytest.raises(HistoryLost, match="never stepped"):
        history.window(now=1.0)


def test_records_for_audio_never_sent_are_refused() -> None:
    history = SessionHistory(SMALL)
    history.add_records(records(0, 1))
    with pytest.raises(HistoryLost):
        history.window(now=0.0)


def test_records_of_another_width_are_refused() -> None:
    with pytest.raises(ValueError, match="width"):
        SessionHistory(SMALL).add_records(records(0, 1, width=4))


def test_a_moshi_sessions_history_stays_bounded() -> None:
    """Ten minutes of a Moshi session: the history never grows past its bound."""
    history = SessionHistory(MOSHI)
    row = np.zeros((1, 17), np.int32)
    sizes = []
    for step in range(10 * 60 * 25 // 2):  # 12.5 frames a second
        history.add_input(frame(0.0), now=step * 0.08)
        history.add_records(row)
        if step % 750 == 749:
            sizes.append(history.nbytes)
    bound = 3000 * 17 * 4 + 125 * FRAME_SAMPLES * 2
    print(f"one session's history: {sizes[-1] / 1024:.0f} KiB after 10 min (bound {bound / 1024:.0f} KiB)")
    assert max(sizes) <= bound + FRAME_SAMPLES * 2
    assert sizes[-1] == sizes[-2]  # flat: nothing grows per session-minute
