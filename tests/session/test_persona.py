"""A prompted model's persona (persona.py): `voice` and `instructions` validated at session.update, sent to
the slot once ahead of the first audio (ApplyPersona), fixed from then on; models without a prompt
channel keep the echo."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.config import ModelTraits
from serve_app.engine.port import Persona
from serve_app.protocol.dialect import Dialect
from serve_app.session.engine_requests import ApplyPersona

from .conftest import FAST
from .harness import Harness, only_error, speak, types_of

PERSONAPLEX = ModelTraits(
    follows_instructions=True,
    voices=("NATF0", "NATM1", "VARF2"),
    default_voice="NATF0",
    default_instructions="You are a helpful assistant.",
    random_weights=True,
)
STOCK_MOSHI = ModelTraits(
    follows_instructions=False, voices=(), default_voice=None, default_instructions=None, random_weights=True
)


@pytest.fixture
def p(dialect: Dialect) -> Harness:
    """A connected session on a PersonaPlex-like model."""
    return Harness(dialect, FAST, traits=PERSONAPLEX)


def _update(h: Harness, *, instructions: str | None = None, voice: str | None = None) -> list[dict[str, Any]]:
    session = h.session_shape(voice=voice)
    if instructions is not None:
        session["instructions"] = instructions
    return h.send({"type": "session.update", "session": session})


def _voice_param(h: Harness) -> str:
    return h.pick(ga="session.audio.output.voice", beta="session.voice")


def test_a_new_session_echoes_the_models_default_persona(dialect: Dialect) -> None:
    h = Harness(dialect, FAST, traits=PERSONAPLEX, connect=False)
    h.session.connect()
    session = h.events()[0]["session"]
    assert h.view(session)["voice"] == "NATF0"
    assert session["instructions"] == "You are a helpful assistant."


def test_the_persona_goes_to_the_slot_once_ahead_of_the_first_audio(p: Harness) -> None:
    (updated,) = _update(p, instructions="You are a pirate.", voice="VARF2")
    assert updated["type"] == "session.updated"
    assert p.view(updated["session"])["voice"] == "VARF2"
    assert updated["session"]["instructions"] == "You are a pirate."
    assert p.requests() == []  # nothing before audio: the client may still change its mind
    assert p.append(1920) == []
    assert p.requests() == [ApplyPersona(Persona(voice="VARF2", instructions="You are a pirate."))]
    assert len(p.session.audio_for_engine()) == 1
    p.append(1920)
    assert p.requests() == []  # once
    assert len(p.session.audio_for_engine()) == 1


def test_a_change_before_the_audio_leaves_still_counts(p: Harness) -> None:
    """The persona is fixed when the first audio goes to the slot, not when it is appended."""
    p.append(1920)
    _update(p, instructions="Speak French.")
    assert p.requests() == [ApplyPersona(Persona(voice="NATF0", instructions="Speak French."))]


def test_unknown_voice_is_an_error_naming_the_field_and_listing_the_voices(p: Harness) -> None:
    error = only_error(_update(p, voice="alloy", instructions="ignored with the rest"))
    assert error["code"] == "invalid_session_update"
    assert error["param"] == _voice_param(p)
    assert "'alloy'" in error["message"] and "NATF0, NATM1, VARF2" in error["message"]
    # Nothing of the refused update applied.
    p.append(1920)
    assert p.requests() == [ApplyPersona(Persona(voice="NATF0", instructions="You are a helpful assistant."))]


@pytest.mark.parametrize("field", ["instructions", "voice"])
def test_changing_the_persona_after_audio_was_sent_is_an_error(p: Harness, field: str) -> None:
    p.append(1920)
    p.requests()
    p.session.audio_for_engine()
    change = {"instructions": "Be someone else."} if field == "instructions" else {"voice": "NATM1"}
    error = only_error(_update(p, **change))
    assert error["code"] == "invalid_session_update"
    assert error["param"] == ("session.instructions" if field == "instructions" else _voice_param(p))
    # The same values again, and other fields, still update.
    (updated,) = _update(p, instructions="You are a helpful assistant.", voice="NATF0")
    assert updated["type"] == "session.updated"
    (updated,) = p.update_input(turn_detection=None)
    assert updated["type"] == "session.updated"


def test_a_shell_that_sends_audio_without_asking_for_requests_still_fixes_the_persona(p: Harness) -> None:
    p.append(1920)
    assert len(p.session.audio_for_engine()) == 1
    assert only_error(_update(p, instructions="Late."))["param"] == "session.instructions"


def test_cleared_instructions_ask_for_the_models_default_persona(p: Harness) -> None:
    _update(p, instructions="")
    p.append(1920)
    assert p.requests() == [ApplyPersona(Persona(voice="NATF0", instructions=None))]


@pytest.mark.parametrize("traits", [None, STOCK_MOSHI], ids=["no_traits", "stock_moshi"])
def test_a_model_without_a_prompt_channel_keeps_the_echo(
    dialect: Dialect, traits: ModelTraits | None
) -> None:
    h = Harness(dialect, FAST, traits=traits)
    (updated,) = _update(h, instructions="You are a pirate.", voice="anything-at-all")
    assert h.view(updated["session"])["voice"] == "anything-at-all"
    h.append(1920)
    assert h.requests() == []
    h.session.audio_for_engine()
    (updated,) = _update(h, instructions="Now a parrot.")  # instructions are only echoed: no lock
    assert updated["session"]["instructions"] == "Now a parrot."
    # The voice lock of the echo: only once assistant audio was heard.
    (updated,) = _update(h, voice="echo")
    assert updated["type"] == "session.updated"
    speak(h, " hi")
    assert only_error(_update(h, voice="shimmer"))["param"] == _voice_param(h)


def test_a_model_with_instructions_but_no_voices_echoes_any_voice(dialect: Dialect) -> None:
    traits = ModelTraits(
        follows_instructions=True,
        voices=(),
        default_voice=None,
        default_instructions=None,
        random_weights=False,
    )
    h = Harness(dialect, FAST, traits=traits)
    (updated,) = _update(h, voice="verse", instructions="Be brief.")
    assert h.view(updated["session"])["voice"] == "verse"
    h.append(1920)
    assert h.requests() == [ApplyPersona(Persona(voice=None, instructions="Be brief."))]
    assert types_of(_update(h, voice="alloy")) == ["session.updated"]  # not a prompt: echoed
    assert only_error(_update(h, instructions="Be long."))["param"] == "session.instructions"
