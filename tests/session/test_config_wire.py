"""session.update read into SessionConfig and written back, per dialect; the shapes are SDK-valid."""

from __future__ import annotations

import pytest
from openai.types import realtime as ga
from openai.types.beta import realtime as beta
from openai.types.beta.realtime import session_update_event

from serve_app.protocol.codecs import AudioFormat
from serve_app.protocol.dialect import Dialect
from serve_app.protocol.errors import ClientError
from serve_app.session.config import SessionConfig
from serve_app.session.config_wire import apply_session_update, format_from_ga, ga_format, session_object


def ga_update(**session: object) -> ga.RealtimeSessionCreateRequest:
    return ga.RealtimeSessionCreateRequest.model_validate({"type": "realtime", **session})


def beta_update(**session: object) -> session_update_event.Session:
    return session_update_event.Session.model_validate(session)


def test_only_present_fields_change() -> None:
    config = SessionConfig(instructions="keep", voice="ash")
    updated = apply_session_update(Dialect.GA, config, ga_update(audio={"output": {"speed": 1.2}}))
    assert updated.instructions == "keep" and updated.voice == "ash" and updated.speed == 1.2


def test_formats_both_shapes() -> None:
    config = SessionConfig()
    for fmt in AudioFormat:
        assert (
            apply_session_update(Dialect.BETA, config, beta_update(input_audio_format=fmt.value)).input_format
            is fmt
        )
        wire = {"input": {"format": ga_format(fmt)}}
        assert apply_session_update(Dialect.GA, config, ga_update(audio=wire)).input_format is fmt


def test_format_rate_is_checked() -> None:
    with pytest.raises(ClientError) as caught:
        format_from_ga(ga.realtime_audio_formats.AudioPCMU.model_validate({"rate": 16000}), param="p")
    assert caught.value.param == "p.rate"


@pytest.mark.parametrize("dialect", list(Dialect))
def test_session_object_is_complete_and_sdk_valid(dialect: Dialect) -> None:
    config = SessionConfig(voice={"id": "voice_1"}, tool_choice={"type": "function", "name": "f"})
    wire = session_object(dialect, config, session_id="sess_1", model_id="moshi-sft", expires_at=5)
    if dialect is Dialect.GA:
        ga.RealtimeSessionCreateRequest.model_validate(wire, strict=True)
        assert wire["audio"]["output"]["voice"] == {"id": "voice_1"} and wire["model"] == "moshi-sft"
    else:
        beta.Session.model_validate(wire, strict=True)
        assert wire["voice"] == "voice_1" and wire["tool_choice"] == "auto" and "model" not in wire
    assert wire["id"] == "sess_1" and wire["object"] == "realtime.session" and wire["expires_at"] == 5


def test_borrowed_shape_errors_name_the_field() -> None:
    with pytest.raises(ClientError) as caught:
        apply_session_update(Dialect.GA, SessionConfig(), ga_update(input_audio_format="mp3"))
    assert (
        caught.value.code == "invalid_session_update" and caught.value.param == "session.input_audio_format"
    )
