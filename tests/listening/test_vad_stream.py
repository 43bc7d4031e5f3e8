"""A session's VAD over real speech: one start/stop pair per sentence, at the fixture's known boundaries."""

from __future__ import annotations

import numpy as np

from serve_app.constants import FRAME_SAMPLES
from serve_app.listening.segmenter import SpeechStarted, SpeechStopped, VadParams
from serve_app.listening.silero import SileroVad
from serve_app.listening.vad_stream import VadStream
from tests.fixtures.speech import sentences, sentences_float

TOLERANCE_MS = 150
PARAMS = VadParams(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500)


def run(stream: VadStream, pcm: np.ndarray) -> list[SpeechStarted | SpeechStopped]:
    events = []
    for start in range(0, len(pcm), FRAME_SAMPLES):  # 80 ms appends, as clients send them
        events += stream.push(pcm[start : start + FRAME_SAMPLES])
    return events


def test_each_sentence_is_one_turn_with_its_boundaries_within_150_ms() -> None:
    events = run(VadStream(SileroVad(), PARAMS), sentences_float())
    known = sentences()
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped] * len(known)
    for sentence, started, stopped in zip(known, events[::2], events[1::2], strict=True):
        assert isinstance(started, SpeechStarted) and isinstance(stopped, SpeechStopped)
        onset = started.audio_start_ms + PARAMS.prefix_padding_ms
        end = stopped.audio_end_ms - PARAMS.silence_duration_ms
        assert abs(onset - sentence.start_ms) <= TOLERANCE_MS, (sentence, onset)
        assert abs(end - sentence.end_ms) <= TOLERANCE_MS, (sentence, end)


def test_noise_and_silence_start_no_turn() -> None:
    rng = np.random.default_rng(0)
    quiet = np.concatenate([np.zeros(48_000), 0.01 * rng.standard_normal(96_000)]).astype(np.float32)
    assert run(VadStream(SileroVad(), PARAMS), quiet) == []


def test_a_stream_started_late_reports_times_on_the_session_timeline() -> None:
    known = sentences()[0]
    pcm = sentences_float()
    offset = 24_000 * 7  # the session had heard 7 s before turn detection was switched on
    events = run(VadStream(SileroVad(), PARAMS, offset_samples=offset), pcm[: known.end_ms * 24 + 24_000])
    started = events[0]
    assert isinstance(started, SpeechStarted)
    assert abs(started.audio_start_ms + PARAMS.prefix_padding_ms - (7000 + known.start_ms)) <= TOLERANCE_MS
