"""What server VAD's speech events do to a session: the buffer's span, the commit, barge-in."""

from __future__ import annotations

from serve_app.protocol.dialect import Dialect
from serve_app.session.conversation import UserAudioItem

from .harness import Harness, types_of


def item_ms(h: Harness, item_id: str) -> float:
    item = h.session.conversation.get(item_id)
    assert isinstance(item, UserAudioItem)
    return item.duration_ms


def test_vad_hooks_emit_speech_events_and_commit_under_one_item_id(h: Harness) -> None:
    h.append(4800)
    item_id = h.session.speech_started(audio_start_ms=20)
    (started,) = h.events()
    assert started == {
        **started,
        "type": "input_audio_buffer.speech_started",
        "audio_start_ms": 20,
        "item_id": item_id,
    }
    assert h.session.speech_stopped(audio_end_ms=180) == item_id
    events = h.events()
    assert types_of(events)[:2] == ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed"]
    assert {e.get("item_id", e.get("item", {}).get("id")) for e in events} == {item_id}


def test_speech_start_drops_audio_before_its_prefix_padding(h: Harness) -> None:
    h.append(24_000)  # 1 s of input
    item_id = h.session.speech_started(audio_start_ms=600)
    h.append(12_000)
    h.session.speech_stopped(audio_end_ms=1500)
    assert item_ms(h, item_id) == 900  # 600 → 1500 ms of the input timeline


def test_audio_after_the_stop_waits_for_the_next_commit(h: Harness) -> None:
    h.session.speech_started(audio_start_ms=0)
    h.append(48_000)  # the VAD judged the stop at 1.5 s; 0.5 s more had already arrived
    h.events()
    item_id = h.session.speech_stopped(audio_end_ms=1500)
    h.events()
    assert item_ms(h, item_id) == 1500
    committed = h.send({"type": "input_audio_buffer.commit"})[0]
    assert committed["type"] == "input_audio_buffer.committed"
    assert item_ms(h, committed["item_id"]) == 500


def test_a_start_while_moshi_speaks_cancels_its_response_and_mutes_the_rest_of_the_utterance(
    h: Harness,
) -> None:
    h.frames(2, speaking=True, text="hi")
    response_id = h.session.active_response_id
    assert response_id is not None
    h.session.speech_started(audio_start_ms=0)
    events = h.events()
    assert types_of(events)[0] == "input_audio_buffer.speech_started"
    done = events[-1]
    assert done["type"] == h.name("response.done") and done["response"]["id"] == response_id
    assert done["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert h.frames(2, speaking=True, text="more") == []  # Moshi's utterance goes on, off the wire


def test_without_interrupt_response_moshi_keeps_speaking(h: Harness) -> None:
    detection = {"type": "server_vad", "interrupt_response": False}
    assert types_of(h.update_input(turn_detection=detection)) == ["session.updated"]
    h.frames(2, speaking=True, text="hi")
    h.session.speech_started(audio_start_ms=0)
    assert types_of(h.events()) == ["input_audio_buffer.speech_started"]
    assert h.session.active_response_id is not None
    assert h.name("response.output_audio.delta") in types_of(h.frames(1, speaking=True))


def test_a_waiting_response_is_not_interrupted(h: Harness) -> None:
    h.send({"type": "response.create"})  # waits for Moshi to speak
    h.session.speech_started(audio_start_ms=0)
    assert types_of(h.events()) == ["input_audio_buffer.speech_started"]
    assert h.session.active_response_id is not None


def test_the_server_can_start_sessions_without_barge_in(dialect: Dialect) -> None:
    from .conftest import FAST

    h = Harness(dialect, FAST.model_copy(update={"default_interrupt_response": False}))
    detection = h.session.config.turn_detection
    assert detection is not None and detection.interrupt_response is False
    h.frames(2, speaking=True, text="hi")
    h.session.speech_started(audio_start_ms=0)
    assert types_of(h.events()) == ["input_audio_buffer.speech_started"]


def test_a_streaming_asr_sends_deltas_for_the_turn_being_spoken_and_completes_it_once(h: Harness) -> None:
    h.update_input(transcription={"model": "kyutai-stt"})
    h.append(24_000)
    item_id = h.session.speech_started(audio_start_ms=300)
    assert h.session.open_speech == (item_id, 300)
    h.events()
    h.session.input_transcription_delta(item_id, "hello")  # before the commit: the item is not there yet
    delta = h.events()
    assert types_of(delta) == ["conversation.item.input_audio_transcription.delta"]
    assert delta[0]["item_id"] == item_id and delta[0]["delta"] == "hello"
    h.append(12_000)
    h.session.speech_stopped(audio_end_ms=1400)
    assert h.session.open_speech is None
    [request] = h.session.transcription_requests()
    assert (request.item_id, request.audio_start_ms, request.audio_end_ms) == (item_id, 300, 1400)
    h.events()
    h.session.input_transcription_completed(item_id, "hello there", streamed=True)
    completed = h.events()
    assert types_of(completed) == ["conversation.item.input_audio_transcription.completed"]
    assert completed[0]["transcript"] == "hello there"


def test_deltas_for_an_unknown_item_are_dropped(h: Harness) -> None:
    h.session.input_transcription_delta("item_nobody_spoke", "ghost")
    assert h.events() == []


def test_a_manual_commit_names_its_window_on_the_input_timeline(h: Harness) -> None:
    h.update_input(turn_detection=None, transcription={"model": "kyutai-stt"})
    h.append(24_000)
    h.send({"type": "input_audio_buffer.commit"})
    h.append(12_000)
    h.send({"type": "input_audio_buffer.commit"})
    first, second = h.session.transcription_requests()
    assert (first.audio_start_ms, first.audio_end_ms) == (0, 1000)
    assert (second.audio_start_ms, second.audio_end_ms) == (1000, 1500)
