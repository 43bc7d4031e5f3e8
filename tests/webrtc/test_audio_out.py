"""The call's paced output track: what plays, and the output_audio_buffer events that say so."""

from __future__ import annotations

import numpy as np

from serve_app.webrtc.audio_out import FRAME_SAMPLES, OutputTrack


def tone(ms: int) -> np.ndarray:
    t = np.arange(24 * ms) / 24_000
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


async def frames(track: OutputTrack, n: int) -> list[np.ndarray]:
    return [(await track.recv()).to_ndarray().reshape(-1) for _ in range(n)]


async def test_a_response_starts_after_its_prebuffer_and_stops_once_played_and_done() -> None:
    events: list[tuple[str, str]] = []
    track = OutputTrack(lambda kind, rid: events.append((kind, rid)))
    track.play("resp_1", tone(80))  # below the prebuffer, not done: waits
    assert not np.any(np.concatenate(await frames(track, 2)))
    assert events == []
    track.play("resp_1", tone(80))
    played = await frames(track, 4)
    assert events == [("output_audio_buffer.started", "resp_1")]
    assert all(np.abs(f).max() > 1000 for f in played) and all(len(f) == FRAME_SAMPLES for f in played)
    track.response_done("resp_1", "completed", None)
    await frames(track, 8)  # 160 ms queued in all, 80 ms played: the rest, then silence
    assert events[-1] == ("output_audio_buffer.stopped", "resp_1")
    assert events.count(("output_audio_buffer.stopped", "resp_1")) == 1
    track.stop()


async def test_barge_in_flushes_the_response_and_clears_it() -> None:
    events: list[tuple[str, str]] = []
    track = OutputTrack(lambda kind, rid: events.append((kind, rid)))
    track.play("resp_2", tone(800))
    await frames(track, 2)
    track.response_done("resp_2", "cancelled", "turn_detected")
    assert events == [("output_audio_buffer.started", "resp_2"), ("output_audio_buffer.cleared", "resp_2")]
    assert not np.any(np.concatenate(await frames(track, 3)))  # nothing of it plays any more
    assert track.queued_samples == 0 and len(events) == 2  # and it never `stopped`
    track.stop()


async def test_a_client_cancel_plays_out_what_is_queued_and_a_flush_drops_it() -> None:
    events: list[tuple[str, str]] = []
    track = OutputTrack(lambda kind, rid: events.append((kind, rid)))
    track.play("resp_3", tone(400))
    await frames(track, 1)
    track.response_done("resp_3", "cancelled", "client_cancelled")  # response.cancel alone
    assert track.queued_samples > 0 and events == [("output_audio_buffer.started", "resp_3")]
    track.flush()  # output_audio_buffer.clear, acknowledged by the session core itself
    assert not np.any(np.concatenate(await frames(track, 2)))
    assert events == [("output_audio_buffer.started", "resp_3")]
    track.stop()
