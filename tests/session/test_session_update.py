"""session.update through the session: both dialects' shapes round-trip, a client may borrow the other
dialect's shape, and the voice is locked once Moshi's audio was heard."""

from __future__ import annotations

from serve_app.protocol.dialect import Dialect

from .harness import Harness, only_error, speak


def test_session_update_round_trip_ga() -> None:
    h = Harness(Dialect.GA)
    update = {
        "type": "realtime",
        "model": "gpt-realtime",
        "instructions": "be brief",
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 700},
                "transcription": {"model": "whisper-1", "language": "en"},
                "noise_reduction": {"type": "near_field"},
            },
            "output": {"format": {"type": "audio/pcma"}, "voice": "marin", "speed": 1.1},
        },
        "tools": [{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}}],
        "tool_choice": "required",
        "max_output_tokens": 500,
        "tracing": "auto",
        "truncation": "auto",
    }
    (event,) = h.send({"type": "session.update", "event_id": "u1", "session": update})
    assert event["type"] == "session.updated"
    session = event["session"]
    assert session["model"] == "moshi-sft"  # cannot change
    assert session["instructions"] == "be brief"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"] == {"format": {"type": "audio/pcma"}, "voice": "marin", "speed": 1.1}
    assert session["audio"]["input"]["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 700,
        "create_response": True,
        "interrupt_response": True,
    }
    assert session["audio"]["input"]["transcription"] == {"model": "whisper-1", "language": "en"}
    assert session["audio"]["input"]["noise_reduction"] == {"type": "near_field"}
    assert session["tools"][0]["name"] == "f" and session["tool_choice"] == "required"
    assert (
        session["max_output_tokens"] == 500
        and session["tracing"] == "auto"
        and session["truncation"] == "auto"
    )
    # Only present fields change; "" clears instructions, [] clears tools, null turns detection off.
    (event,) = h.send(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "instructions": "",
                "tools": [],
                "audio": {"input": {"turn_detection": None}},
            },
        }
    )
    session = event["session"]
    assert session["instructions"] == "" and session["tools"] == []
    assert session["audio"]["input"]["turn_detection"] is None
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}  # untouched
    assert session["audio"]["output"]["voice"] == "marin"


def test_session_update_round_trip_beta() -> None:
    h = Harness(Dialect.BETA)
    update = {
        "model": "gpt-4o-realtime-preview",
        "modalities": ["text"],
        "instructions": "hi",
        "voice": "verse",
        "input_audio_format": "g711_alaw",
        "output_audio_format": "g711_ulaw",
        "input_audio_transcription": {"model": "whisper-1"},
        "turn_detection": {"type": "semantic_vad", "eagerness": "high"},
        "tools": [{"type": "function", "name": "f", "parameters": {}}],
        "tool_choice": "none",
        "temperature": 0.6,
        "max_response_output_tokens": 100,
        "speed": 0.9,
    }
    (event,) = h.send({"type": "session.update", "session": update})
    session = event["session"]
    assert "model" not in session
    assert session["modalities"] == ["text"]
    assert session["voice"] == "verse" and session["speed"] == 0.9 and session["temperature"] == 0.6
    assert session["input_audio_format"] == "g711_alaw" and session["output_audio_format"] == "g711_ulaw"
    assert session["input_audio_transcription"] == {"model": "whisper-1"}
    assert session["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "high",
        "create_response": True,
        "interrupt_response": True,
    }
    assert session["tool_choice"] == "none" and session["max_response_output_tokens"] == 100
    (event,) = h.send({"type": "session.update", "session": {"turn_detection": None}})
    assert event["session"]["turn_detection"] is None and event["session"]["voice"] == "verse"


def test_beta_client_may_send_ga_shaped_session_fields() -> None:
    h = Harness(Dialect.BETA)
    ga_shaped = {
        "type": "realtime",
        "output_modalities": ["text"],
        "audio": {"input": {"format": {"type": "audio/pcmu"}}, "output": {"voice": "ash"}},
    }
    (event,) = h.send({"type": "session.update", "session": ga_shaped})
    session = event["session"]
    assert session["input_audio_format"] == "g711_ulaw" and session["voice"] == "ash"
    assert session["modalities"] == ["text"]
    # A native field wins over the GA-shaped one.
    (event,) = h.send(
        {"type": "session.update", "session": {"voice": "sage", "audio": {"output": {"voice": "coral"}}}}
    )
    assert event["session"]["voice"] == "sage"
    # The borrowed shape is validated too.
    error = only_error(
        h.send(
            {
                "type": "session.update",
                "event_id": "x",
                "session": {"audio": {"input": {"format": {"type": "mp3"}}}},
            }
        )
    )
    assert error["code"] == "invalid_session_update" and error["event_id"] == "x"
    assert error["param"].startswith("session.audio.input.format")


def test_ga_client_may_add_flat_beta_fields() -> None:
    h = Harness(Dialect.GA)
    (event,) = h.send(
        {"type": "session.update", "session": {"type": "realtime", "input_audio_format": "g711_ulaw"}}
    )
    assert event["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}


def test_ga_session_update_without_type_is_an_error() -> None:
    h = Harness(Dialect.GA)
    error = only_error(h.send({"type": "session.update", "event_id": "e9", "session": {"instructions": "x"}}))
    assert error["code"] == "invalid_session_update"
    assert error["param"] == "session.type" and error["event_id"] == "e9"
    assert "OpenAI-Beta" in error["message"]
    error = only_error(h.send({"type": "session.update", "session": {"type": "transcription"}}))
    assert error["code"] == "invalid_session_update"
    assert h.send({"type": "session.update", "session": {"type": "realtime"}})[0]["type"] == "session.updated"


def test_beta_transcription_session_update_is_refused() -> None:
    h = Harness(Dialect.BETA)
    error = only_error(h.send({"type": "transcription_session.update", "session": {}}))
    assert error["code"] == "invalid_session_update"


def test_ga_pcm_format_must_be_24khz_even_without_a_type() -> None:
    h = Harness(Dialect.GA)
    # The SDK's format members all have an optional `type`, so {"rate": 16000} passes the types.
    error = only_error(
        h.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"format": {"rate": 16000}}}},
            }
        )
    )
    assert error["code"] == "invalid_session_update" and error["param"] == "session.audio.output.format.rate"
    (event,) = h.send(
        {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"format": {}}}}}
    )
    assert event["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}


def test_voice_is_locked_once_audio_was_sent(h: Harness) -> None:
    assert h.update_session(voice="echo")[0]["type"] == "session.updated"
    speak(h, "hi")
    assert h.update_session(voice="echo")[0]["type"] == "session.updated"  # unchanged: fine
    error = only_error(h.update_session(voice="sage"))
    assert error["code"] == "invalid_session_update" and "voice" in error["param"]
    assert error["param"] == h.pick(ga="session.audio.output.voice", beta="session.voice")


def test_a_format_update_changes_what_the_next_append_decodes(h: Harness) -> None:
    (updated,) = h.update_session(input_format="g711_alaw", output_format="g711_ulaw")
    view = h.view(updated["session"])
    assert (view["input_format"], view["output_format"]) == ("g711_alaw", "g711_ulaw")
    h.send({"type": "input_audio_buffer.append", "audio": "1dXV1Q=="})  # 4 A-law bytes at 8 kHz
    (pcm,) = h.session.audio_for_engine()
    assert len(pcm) == 12  # upsampled to 24 kHz by the new decoder
