"""session.update read into SessionConfig and written back, response.create read into ResponseOptions,
per dialect; the shapes are SDK-valid."""

from __future__ import annotations

import pytest
from openai.types import realtime as ga
from openai.types.beta import realtime as beta
from openai.types.beta.realtime import response_create_event, session_update_event
from pydantic import BaseModel

from serve_app.protocol.codecs import AudioFormat
from serve_app.protocol.dialect import Dialect
from serve_app.protocol.errors import ClientError
from serve_app.session.client_config import (
    apply_session_update,
    format_from_ga,
    ga_format,
    response_options,
    session_object,
)
from serve_app.session.config import SessionConfig


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


@pytest.mark.parametrize(
    ("dialect", "sdk_type", "echoed"),
    [
        (Dialect.GA, ga.RealtimeSessionCreateRequest, {"model": "moshi-sft"}),
        (Dialect.BETA, beta.Session, {"voice": "voice_1", "tool_choice": "auto"}),
    ],
)
def test_session_object_is_complete_and_sdk_valid(
    dialect: Dialect, sdk_type: type[BaseModel], echoed: dict[str, object]
) -> None:
    config = SessionConfig(voice={"id": "voice_1"}, tool_choice={"type": "function", "name": "f"})
    wire = session_object(dialect, config, session_id="sess_1", model_id="moshi-sft", expires_at=5)
    sdk_type.model_validate(wire, strict=True)
    assert wire == {**wire, **echoed}
    assert wire["id"] == "sess_1" and wire["object"] == "realtime.session" and wire["expires_at"] == 5


def test_the_session_object_says_voice_and_model_as_each_dialect_can() -> None:
    config = SessionConfig(voice={"id": "voice_1"})
    ga_wire = session_object(Dialect.GA, config, session_id="s", model_id="moshi-sft", expires_at=5)
    beta_wire = session_object(Dialect.BETA, config, session_id="s", model_id="moshi-sft", expires_at=5)
    assert ga_wire["audio"]["output"]["voice"] == {"id": "voice_1"}
    assert "model" not in beta_wire  # beta types model as a Literal of OpenAI's names


def test_borrowed_shape_errors_name_the_field() -> None:
    with pytest.raises(ClientError) as caught:
        apply_session_update(Dialect.GA, SessionConfig(), ga_update(input_audio_format="mp3"))
    assert (
        caught.value.code == "invalid_session_update" and caught.value.param == "session.input_audio_format"
    )


def test_response_options_default_to_the_session_and_take_what_response_create_asks() -> None:
    config = SessionConfig(voice="ash", temperature=0.6)
    defaults = response_options(Dialect.GA, config, "conv_1", None)
    assert (defaults.voice, defaults.temperature, defaults.audio_output) == ("ash", 0.6, True)
    params = ga.RealtimeResponseCreateParams.model_validate(
        {"output_modalities": ["text"], "audio": {"output": {"format": {"type": "audio/pcmu"}}}}
    )
    asked = response_options(Dialect.GA, config, "conv_1", params)
    assert (asked.audio_output, asked.output_format, asked.voice) == (False, AudioFormat.G711_ULAW, "ash")


def test_response_create_in_both_shapes_the_sessions_own_dialect_wins() -> None:
    """As for session.update (docs/ARCHITECTURE.md, "lenient session shapes")."""
    both = {"modalities": ["text"], "output_modalities": ["audio"], "voice": "sage"}
    ga_params = ga.RealtimeResponseCreateParams.model_validate(
        {**both, "audio": {"output": {"voice": "ash"}}}
    )
    ga_options = response_options(Dialect.GA, SessionConfig(), "c", ga_params)
    assert (ga_options.audio_output, ga_options.voice) == (True, "ash")
    beta_params = response_create_event.Response.model_validate(
        {**both, "audio": {"output": {"voice": "ash"}}}
    )
    beta_options = response_options(Dialect.BETA, SessionConfig(), "c", beta_params)
    assert (beta_options.audio_output, beta_options.voice) == (False, "sage")


def test_a_custom_voice_object_in_response_create_is_read_as_data() -> None:
    params = ga.RealtimeResponseCreateParams.model_validate(
        {"audio": {"output": {"voice": {"id": "voice_1"}}}}
    )
    options = response_options(Dialect.GA, SessionConfig(), "c", params)
    assert options.voice == {"id": "voice_1"} and options.voice_name == "voice_1"
