from __future__ import annotations

from serve_app.session.utterance import Utterance, UtteranceEnd


def test_ends_after_enough_consecutive_silence() -> None:
    utterance = Utterance(silence_frames=3, max_frames=100)
    assert [utterance.add(s) for s in (True, False, False, True, False, False)] == [None] * 6
    assert utterance.add(False) is UtteranceEnd.SILENCE
    assert utterance.frames == 7


def test_ends_at_max_length() -> None:
    utterance = Utterance(silence_frames=3, max_frames=4)
    assert [utterance.add(True) for _ in range(3)] == [None] * 3
    assert utterance.add(True) is UtteranceEnd.MAX_LENGTH
