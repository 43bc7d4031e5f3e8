from __future__ import annotations

import pytest

from serve_app.protocol.codecs import AudioFormat
from serve_app.session.config import SessionConfig, TurnDetection
from serve_app.session.settings import SessionSettings


def test_initial_config_comes_from_settings() -> None:
    config = SessionConfig.initial(SessionSettings(default_voice="cedar", default_instructions="be kind"))
    assert config.voice == "cedar" and config.instructions == "be kind"
    assert config.input_format is AudioFormat.PCM16 and config.audio_output
    assert config.turn_detection == TurnDetection(
        type="server_vad", threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500
    )
    assert SessionConfig.initial(SessionSettings(default_turn_detection=None)).turn_detection is None


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (
            {},
            {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 500,
                "create_response": True,
                "interrupt_response": True,
            },
        ),
        (
            {"type": "server_vad", "threshold": 0.8, "create_response": False, "idle_timeout_ms": 5000},
            {
                "type": "server_vad",
                "threshold": 0.8,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 500,
                "idle_timeout_ms": 5000,
                "create_response": False,
                "interrupt_response": True,
            },
        ),
        (
            {"type": "semantic_vad"},
            {
                "type": "semantic_vad",
                "eagerness": "auto",
                "create_response": True,
                "interrupt_response": True,
            },
        ),
    ],
)
def test_turn_detection_fills_documented_defaults(wire: dict, expected: dict) -> None:
    assert TurnDetection.from_wire(wire).to_wire(with_idle_timeout=True) == expected


def test_idle_timeout_is_ga_only() -> None:
    detection = TurnDetection.from_wire({"idle_timeout_ms": 100})
    assert "idle_timeout_ms" not in detection.to_wire(with_idle_timeout=False)


def test_voice_name_of_a_custom_voice() -> None:
    assert SessionConfig(voice={"id": "voice_123"}).voice_name == "voice_123"
    assert SessionConfig(voice="ash").voice_name == "ash"
