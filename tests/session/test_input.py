"""The input audio buffer through the session: appends go to Moshi at once, commits make user items,
and input faster than Moshi steps it is refused past the backlog."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from serve_app.constants import FRAME_SAMPLES
from serve_app.protocol.dialect import Dialect

from .conftest import FAST
from .harness import Harness, b64_pcm16, only_error, types_of


def test_append_feeds_moshi_and_sends_nothing(h: Harness) -> None:
    samples = (np.arange(4800) % 200 - 100).astype(np.int16)
    assert h.send({"type": "input_audio_buffer.append", "audio": b64_pcm16(samples)}) == []
    (pcm,) = h.session.audio_for_engine()
    assert pcm.dtype == np.float32 and len(pcm) == 4800
    np.testing.assert_array_equal(np.rint(pcm * 32768).astype(np.int16), samples)
    assert h.session.audio_for_engine() == []  # drained
    assert h.session.input_audio_ms == 200


def test_commit_creates_a_user_item_and_chains_previous_ids(h: Harness) -> None:
    h.append(2400)  # 100 ms: just enough
    events = h.send({"type": "input_audio_buffer.commit", "event_id": "c1"})
    assert types_of(events) == ["input_audio_buffer.committed", *h.announce_types]
    first = events[0]["item_id"]
    assert first.startswith("item_") and events[0]["previous_item_id"] is None
    for event in events[1:]:
        assert event["item"]["id"] == first and event["previous_item_id"] is None
        assert event["item"]["role"] == "user" and event["item"]["status"] == "completed"
        assert event["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    h.append(4800)
    events = h.send({"type": "input_audio_buffer.commit"})
    assert events[0]["previous_item_id"] == first
    assert h.session.conversation.ids == [first, events[0]["item_id"]]


@pytest.mark.parametrize("samples", [0, 2399])
def test_commit_of_less_than_100ms_is_refused(h: Harness, samples: int) -> None:
    if samples:
        h.append(samples)
    error = only_error(h.send({"type": "input_audio_buffer.commit", "event_id": "c2"}))
    assert error["code"] == "input_audio_buffer_commit_empty" and error["event_id"] == "c2"
    assert error["type"] == "invalid_request_error"
    expected_ms = f"{samples / 24:.2f}ms"
    assert error["message"] == (
        "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
        f"but buffer only has {expected_ms} of audio."
    )


def test_clear_empties_the_buffer(h: Harness) -> None:
    h.append(4800)
    assert types_of(h.send({"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]
    assert (
        only_error(h.send({"type": "input_audio_buffer.commit"}))["code"] == "input_audio_buffer_commit_empty"
    )
    assert len(h.session.audio_for_engine()) == 1  # Moshi heard it anyway


def test_g711_input_is_decoded_and_upsampled_for_moshi(h: Harness) -> None:
    h.update_session(input_format="g711_ulaw")
    h.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes([0xFF]) * 800).decode()})
    (pcm,) = h.session.audio_for_engine()
    assert len(pcm) == 2400  # 100 ms at 8 kHz -> 24 kHz
    assert np.all(pcm == 0)
    assert h.send({"type": "input_audio_buffer.commit"})[0]["type"] == "input_audio_buffer.committed"


def test_odd_length_pcm16_names_the_problem(h: Harness) -> None:
    error = only_error(
        h.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()})
    )
    assert error["code"] == "invalid_audio" and "2-byte" in error["message"]
    assert h.session.audio_for_engine() == []


def test_input_faster_than_real_time_is_refused_past_the_backlog(dialect: Dialect) -> None:
    h = Harness(dialect, FAST.model_copy(update={"max_input_backlog_ms": 400}))  # 5 frames
    assert h.append(4 * FRAME_SAMPLES) == []
    error = only_error(
        h.send({"type": "input_audio_buffer.append", "event_id": "a9", "audio": b64_pcm16(3840)})
    )
    assert error["code"] == "input_audio_backlog_full" and error["event_id"] == "a9"
    assert "320ms are already waiting" in error["message"]
    assert len(h.session.audio_for_engine()) == 1  # the refused chunk never reached Moshi
    h.frames(2, speaking=False)  # Moshi stepped two frames: room for two more
    assert h.append(2 * FRAME_SAMPLES) == []
    assert only_error(h.append(FRAME_SAMPLES + 1))["code"] == "input_audio_backlog_full"
