"""Cutting a streaming recogniser's text into user turns: timing, claims, completion, flush silence."""

from __future__ import annotations

from serve_app.asr.stream_turns import StreamTurns, TurnCompleted, TurnDelta, TurnEvent
from serve_app.constants import FRAME_MS

DELAY_MS = 480.0  # 6 frames


def frames(turns: StreamTurns, texts: list[str | None]) -> list[TurnEvent]:
    """Feed one 80 ms frame of audio per text and return what the stream's output produced."""
    events: list[TurnEvent] = []
    for text in texts:
        turns.fed_audio(FRAME_MS)
        events += turns.frame(text)
    return events


def deltas(events: list[TurnEvent]) -> list[tuple[str, str]]:
    return [(e.item_id, e.text) for e in events if isinstance(e, TurnDelta)]


def completed(events: list[TurnEvent]) -> list[tuple[str, str]]:
    return [(e.item_id, e.transcript) for e in events if isinstance(e, TurnCompleted)]


def test_text_goes_to_the_turn_being_spoken_as_it_comes() -> None:
    turns = StreamTurns(origin_ms=0, text_delay_ms=DELAY_MS)
    assert frames(turns, [None] * 10) == []  # 0.8 s of silence
    assert turns.speech_started("item_a", 800) == []
    # Text about the audio at 800 ms comes out 480 ms later (frame 16 ends at 1280 ms).
    events = frames(turns, [None] * 5 + [" hello", " wor", "ld"])
    assert deltas(events) == [("item_a", "hello"), ("item_a", " wor"), ("item_a", "ld")]
    assert completed(events) == []


def test_a_committed_turn_completes_once_the_text_has_passed_its_end() -> None:
    turns = StreamTurns(origin_ms=0, text_delay_ms=DELAY_MS)
    turns.speech_started("item_a", 0)
    frames(turns, [" one"] + [None] * 9)  # 800 ms of audio: text is about 0..320 ms
    assert turns.committed("item_a", 0, 400) == []  # the text about 400..480 ms is still to come
    assert turns.waiting
    events = frames(turns, [" two", None])  # frame 11: about 400 ms; frame 12: about 480 ms
    assert deltas(events) == [("item_a", " two")]
    assert completed(events) == [("item_a", "one two")]
    assert not turns.waiting


def test_text_before_a_turn_was_announced_is_claimed_when_it_is() -> None:
    turns = StreamTurns(origin_ms=0, text_delay_ms=DELAY_MS)
    frames(turns, [None] * 6 + [" early", " bird"] + [None] * 8)  # about 0 and 80 ms
    events = turns.committed("item_m", 0, 400)  # a manual commit of the first 400 ms
    assert deltas(events) == [("item_m", "early bird")]
    assert completed(events) == [("item_m", "early bird")]


def test_text_outside_every_turn_is_nobody_s() -> None:
    turns = StreamTurns(origin_ms=0, text_delay_ms=DELAY_MS)
    frames(turns, [None] * 6 + [" noise"] + [None] * 20)  # about 0 ms
    turns.speech_started("item_b", 1000)
    events = frames(turns, [None] * 3) + turns.committed("item_b", 1000, 1200)
    assert deltas(events) == []


def test_a_word_that_continues_stays_with_its_turn_across_the_boundary() -> None:
    turns = StreamTurns(origin_ms=0, text_delay_ms=0)
    turns.speech_started("item_a", 0)
    events = frames(turns, [" inter", "rupt"])
    turns.committed("item_a", 0, 80)
    assert deltas(events) == [("item_a", "inter"), ("item_a", "rupt")]


def test_the_stream_s_origin_is_where_it_opened_on_the_input_timeline() -> None:
    turns = StreamTurns(origin_ms=5000, text_delay_ms=0)
    turns.speech_started("item_a", 5000)
    events = frames(turns, [" late", " opener"])
    events += turns.committed("item_a", 5000, 5080)
    assert completed(events) == [("item_a", "late opener")]


def test_flush_silence_completes_a_turn_without_shifting_later_ones() -> None:
    turns = StreamTurns(origin_ms=0, text_delay_ms=DELAY_MS)
    turns.speech_started("item_a", 0)
    frames(turns, [" a"] + [None] * 4)  # 400 ms, then the client stops sending
    turns.committed("item_a", 0, 400)
    needed = turns.silence_to_flush_ms()
    assert needed == DELAY_MS + FRAME_MS  # the text about the turn's end, one frame more
    events: list[TurnEvent] = []
    for _ in range(int(needed // FRAME_MS)):
        turns.fed_silence(FRAME_MS)
        events += turns.frame(None)
    assert completed(events) == [("item_a", "a")]
    assert turns.silence_to_flush_ms() == 0
    # The client comes back: its next audio sits at 400 ms of the input timeline, after the silence.
    turns.fed_audio(160)
    assert turns.to_input(400 + needed) == 400
    assert turns.to_input(400 + needed + 160) == 560
    assert turns.to_stream(560) == 400 + needed + 160


def test_when_the_stream_is_lost_its_committed_turns_are_returned_for_failing() -> None:
    turns = StreamTurns(origin_ms=0, text_delay_ms=DELAY_MS)
    turns.speech_started("item_a", 0)
    frames(turns, [None] * 3)
    turns.committed("item_a", 0, 240)
    turns.speech_started("item_b", 300)
    assert turns.fail_all() == ["item_a"]
    assert not turns.waiting


def test_a_vad_turn_completes_once_the_text_has_passed_where_the_speech_ended() -> None:
    turns = StreamTurns(origin_ms=0, text_delay_ms=DELAY_MS)
    turns.speech_started("item_a", 0)
    # 400 ms of speech and 560 ms of its silence run: the text about 0..480 ms is out by now.
    events = frames(turns, [" said"] + [None] * 11)
    events += turns.committed("item_a", 0, 960, speech_end_ms=400)
    assert completed(events) == [("item_a", "said")]  # at the commit, not a delay later
    late = StreamTurns(origin_ms=0, text_delay_ms=DELAY_MS)
    late.speech_started("item_b", 0)
    frames(late, [" said"] + [None] * 11)
    assert late.committed("item_b", 0, 960) == []  # a manual commit waits for the text about its end
