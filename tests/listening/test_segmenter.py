"""Speech probabilities → speech start/stop with the hosted service's timing semantics."""

from __future__ import annotations

from serve_app.listening.segmenter import HYSTERESIS, SpeechStarted, SpeechStopped, TurnSegmenter, VadParams

WINDOW_MS = 32.0


def run(segmenter: TurnSegmenter, probabilities: list[float]) -> list[tuple[int, object]]:
    """(window index, event) for every window that produced one."""
    found = []
    for k, p in enumerate(probabilities):
        event = segmenter.push(p)
        if event is not None:
            found.append((k, event))
    return found


def test_speech_starts_at_the_first_window_over_threshold_backdated_by_the_prefix_padding() -> None:
    seg = TurnSegmenter(VadParams(threshold=0.5, prefix_padding_ms=100, silence_duration_ms=320), WINDOW_MS)
    events = run(seg, [0.1] * 20 + [0.9] * 10 + [0.0] * 30)
    assert events[0] == (20, SpeechStarted(audio_start_ms=20 * 32 - 100))
    # 10 silent windows (320 ms) after the last speech window end it; the end includes that silence.
    assert events[1] == (39, SpeechStopped(audio_end_ms=40 * 32, speech_end_ms=30 * 32))
    assert len(events) == 2 and not seg.speaking


def test_the_prefix_padding_never_reaches_before_the_timeline_start() -> None:
    seg = TurnSegmenter(VadParams(prefix_padding_ms=300), WINDOW_MS)
    assert run(seg, [0.1, 0.9]) == [(1, SpeechStarted(audio_start_ms=0))]


def test_a_dip_shorter_than_the_silence_duration_or_above_the_hysteresis_keeps_one_utterance() -> None:
    seg = TurnSegmenter(VadParams(threshold=0.5, silence_duration_ms=320), WINDOW_MS)
    hovering = [0.5 - HYSTERESIS + 0.01] * 40  # under the threshold but over its hysteresis band
    short_dip = [0.0] * 9  # 288 ms < 320 ms
    events = run(seg, [0.9] * 5 + hovering + short_dip + [0.9] * 5 + [0.0] * 10)
    assert [type(e) for _, e in events] == [SpeechStarted, SpeechStopped]


def test_two_utterances_apart_by_more_than_the_silence_duration_are_two() -> None:
    seg = TurnSegmenter(VadParams(silence_duration_ms=200), WINDOW_MS)
    events = run(seg, ([0.9] * 10 + [0.0] * 10) * 2)
    assert [type(e) for _, e in events] == [SpeechStarted, SpeechStopped] * 2


def test_changed_parameters_apply_from_the_next_window_and_the_offset_moves_the_timeline() -> None:
    seg = TurnSegmenter(VadParams(threshold=0.95), WINDOW_MS, offset_ms=1000.0)
    assert run(seg, [0.9] * 3) == []
    seg.params = VadParams(threshold=0.5, prefix_padding_ms=0)
    assert run(seg, [0.9]) == [(0, SpeechStarted(audio_start_ms=1000 + 3 * 32))]
