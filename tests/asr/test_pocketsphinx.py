"""The embedded default ASR on the committed festival sentences."""

from __future__ import annotations

import pytest

from serve_app.asr.backend import TranscriptionFailed
from serve_app.asr.pocketsphinx_backend import PocketsphinxTranscriber
from tests.fixtures.speech import sentences, sentences_float, word_error_rate


def test_it_transcribes_the_fixture_sentences_under_15_percent_wer() -> None:
    asr = PocketsphinxTranscriber()
    pcm = sentences_float()
    known = sentences()
    # Each turn as server VAD commits it: from 300 ms before the speech to 500 ms after it.
    hypotheses = [asr.transcribe(pcm[(s.start_ms - 300) * 24 : (s.end_ms + 500) * 24]) for s in known]
    wer = word_error_rate([s.text for s in known], hypotheses)
    assert wer < 0.15, (wer, hypotheses)


def test_silence_is_an_empty_transcript_and_other_languages_fail_in_words() -> None:
    asr = PocketsphinxTranscriber()
    assert asr.transcribe(sentences_float()[:4800]) == ""
    with pytest.raises(TranscriptionFailed, match="English only"):
        asr.transcribe(sentences_float()[:4800], language="fr")
