"""Personas and scripted speech through the official openai SDK (GA and beta) against the in-process
server on the embedded default models (tiny random-weight checkpoints, one of them PersonaPlex-shaped)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from openai import AsyncOpenAI

from serve_app.config import EMBEDDED_MODELS, EMBEDDED_PERSONA_MODEL, AppConfig, RealtimeLimits
from serve_app.constants import SAMPLE_RATE
from serve_app.engine.port import Persona
from serve_app.session.settings import SessionSettings
from tests.fixtures.audio import speech_like, to_pcm16
from tests.server.conftest import RunningServer, serve_in_process
from tests.server.test_sdk_conversation import BETA, GA, Names, Transcript, _recv_until

GREETING = "hello there, this is a scripted greeting"
CHUNK_S = 0.08
TINY_VOICES = ("NATF0", "NATM1", "VARF2")


@dataclass(frozen=True)
class Dialect:
    """What differs between the dialects, for these tests."""

    name: str
    names: Names
    connect: Callable[[AsyncOpenAI, str], Any]
    persona: Callable[..., dict[str, Any]]
    """session.update's session with turn detection off, and a voice / instructions when given."""
    voice_of: Callable[[Any], str]
    voice_param: str
    text_part: str


def _ga_persona(voice: str | None = None, instructions: str | None = None) -> dict[str, Any]:
    session: dict[str, Any] = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
    if voice is not None:
        session["audio"]["output"] = {"voice": voice}
    return session | ({"instructions": instructions} if instructions is not None else {})


def _beta_persona(voice: str | None = None, instructions: str | None = None) -> dict[str, Any]:
    session: dict[str, Any] = {"turn_detection": None}
    session |= {"voice": voice} if voice is not None else {}
    return session | ({"instructions": instructions} if instructions is not None else {})


DIALECTS = [
    Dialect(
        "ga",
        GA,
        lambda client, model: client.realtime.connect(model=model),
        _ga_persona,
        lambda session: str(session.audio.output.voice),
        "session.audio.output.voice",
        "output_text",
    ),
    Dialect(
        "beta",
        BETA,
        lambda client, model: client.beta.realtime.connect(model=model),
        _beta_persona,
        lambda session: str(session.voice),
        "session.voice",
        "text",
    ),
]


@pytest.fixture(scope="module")
def embedded_server() -> Iterator[RunningServer]:
    """The embedded default's models (as configs/local.yaml serves them), 2 slots each, admitted by slot
    count alone (client, server and engines share this process's cores)."""
    lenient = RealtimeLimits(admit_fraction=None, max_lag_ms=5000)
    default = AppConfig.embedded_default(slots=2)
    config = AppConfig(
        models=tuple(model.model_copy(update={"realtime": lenient}) for model in default.models),
        session=SessionSettings(utterance_silence_ms=480),
        server={"api_keys": (), "max_loop_lag_ms": None},
    )
    with serve_in_process(config) as server:
        yield server


@pytest.fixture(params=DIALECTS, ids=[d.name for d in DIALECTS])
def dialect(request: pytest.FixtureRequest) -> Dialect:
    value: Dialect = request.param
    return value


@contextlib.asynccontextmanager
async def _session(
    server: RunningServer, dialect: Dialect, model: str
) -> AsyncIterator[tuple[Any, Transcript]]:
    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=server.ws_base)
    async with dialect.connect(client, model) as conn:
        log = Transcript()
        created = await _recv_until(conn, log, lambda e: True, 10)
        assert created.type == "session.created", created
        yield conn, log


async def _update(conn: Any, log: Transcript, session: dict[str, Any]) -> Any:
    await conn.session.update(session=session)
    return await _recv_until(conn, log, lambda e: e.type in ("session.updated", "error"), 10)


@contextlib.asynccontextmanager
async def _audio(conn: Any, seconds: float = 12.0) -> AsyncIterator[None]:
    """Paced speech-like input while the block runs (Moshi steps only on input audio)."""

    async def send() -> None:
        pcm = speech_like(seconds, seed=5)
        step = int(CHUNK_S * SAMPLE_RATE)
        for start in range(0, len(pcm), step):
            await conn.input_audio_buffer.append(
                audio=base64.b64encode(to_pcm16(pcm[start : start + step])).decode()
            )
            await asyncio.sleep(CHUNK_S)

    sender = asyncio.create_task(send())
    try:
        yield
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


def _of_response(log: Transcript, kind: str, response_id: str) -> list[Any]:
    return [e for e in log.of_type(kind) if e.response_id == response_id]


# Personas ----------------------------------------------------------------------------------------


async def test_a_persona_set_before_audio_is_echoed_then_the_model_speaks(
    embedded_server: RunningServer, dialect: Dialect, slot_calls: list[tuple[Any, ...]]
) -> None:
    async with _session(embedded_server, dialect, EMBEDDED_PERSONA_MODEL) as (conn, log):
        updated = await _update(conn, log, dialect.persona(voice="VARF2", instructions="You are a pirate."))
        assert updated.type == "session.updated", updated
        assert dialect.voice_of(updated.session) == "VARF2"
        assert updated.session.instructions == "You are a pirate."
        async with _audio(conn):
            done = await _recv_until(
                conn, log, lambda e: e.type == "response.done" and e.response.status == "completed", 20
            )
        # The slot was prompted with the persona ahead of its first audio.
        assert slot_calls[:2] == [("set_persona", Persona("VARF2", "You are a pirate.")), ("send_audio",)]
        assert [call for call in slot_calls if call[0] != "send_audio"] == slot_calls[:1]
        response_id = done.response.id
        assert _of_response(log, dialect.names.audio_delta, response_id)
        assert _of_response(log, dialect.names.transcript_delta, response_id)
        assert not log.of_type("error"), log.of_type("error")
        # The persona was prompted with the first audio: it cannot change any more.
        error = await _update(conn, log, dialect.persona(instructions="Now you are a parrot."))
        assert error.type == "error"
        assert (error.error.code, error.error.param) == ("invalid_session_update", "session.instructions")


async def test_an_unknown_voice_is_an_error_naming_the_field(
    embedded_server: RunningServer, dialect: Dialect
) -> None:
    async with _session(embedded_server, dialect, EMBEDDED_PERSONA_MODEL) as (conn, log):
        error = await _update(conn, log, dialect.persona(voice="alloy"))
        assert error.type == "error"
        assert (error.error.code, error.error.param) == ("invalid_session_update", dialect.voice_param)
        assert all(voice in error.error.message for voice in TINY_VOICES)


# Scripted speech ---------------------------------------------------------------------------------


async def _say(conn: Any, log: Transcript, dialect: Dialect) -> str:
    """The greeting as an assistant item, then response.create; returns the response's id."""
    updated = await _update(conn, log, dialect.persona())
    assert updated.type == "session.updated", updated
    item = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": dialect.text_part, "text": GREETING}],
    }
    await conn.conversation.item.create(item=item)
    await conn.response.create()
    created = await _recv_until(conn, log, lambda e: e.type in ("response.created", "error"), 10)
    assert created.type == "response.created", created
    return str(created.response.id)


@pytest.mark.parametrize("model", list(EMBEDDED_MODELS))
async def test_scripted_speech_says_exactly_the_text(
    embedded_server: RunningServer, dialect: Dialect, model: str, slot_calls: list[tuple[Any, ...]]
) -> None:
    async with _session(embedded_server, dialect, model) as (conn, log):
        response_id = await _say(conn, log, dialect)
        async with _audio(conn):
            done = await _recv_until(conn, log, lambda e: e.type == "response.done", 20)
        assert done.response.id == response_id and done.response.status == "completed", done.response
        assert ("say", GREETING) in slot_calls and ("stop_saying",) not in slot_calls
        names = dialect.names
        pieces = _of_response(log, names.transcript_delta, response_id)
        assert "".join(e.delta for e in pieces) == GREETING
        (final,) = _of_response(log, names.transcript_done, response_id)
        assert final.transcript == GREETING
        # Audio spans the text: it starts with the first piece's frame and goes on past the last one.
        order = {id(e): index for index, e in enumerate(log.events)}
        audio = [order[id(e)] for e in _of_response(log, names.audio_delta, response_id)]
        text = [order[id(e)] for e in pieces]
        assert audio[0] < text[0] and audio[-1] > text[-1]
        assert len(audio) > len(text)  # pauses between words too
        assert not log.of_type("error"), log.of_type("error")


@pytest.mark.parametrize("model", list(EMBEDDED_MODELS))
async def test_a_cancelled_script_stops_midway(
    embedded_server: RunningServer, dialect: Dialect, model: str, slot_calls: list[tuple[Any, ...]]
) -> None:
    async with _session(embedded_server, dialect, model) as (conn, log):
        response_id = await _say(conn, log, dialect)
        names = dialect.names
        async with _audio(conn):
            await _recv_until(conn, log, lambda e: e.type == names.transcript_delta, 20)
            await conn.response.cancel()
            done = await _recv_until(conn, log, lambda e: e.type == "response.done", 10)
            assert done.response.id == response_id and done.response.status == "cancelled"
            orders = [call for call in slot_calls if call[0] in ("say", "stop_saying")]
            assert orders == [("say", GREETING), ("stop_saying",)]
            ended_at = len(log.events)
            # Long enough for the rest of the script (about 3 s in all) had it gone on.
            with contextlib.suppress(TimeoutError):
                await _recv_until(conn, log, lambda e: False, 3.0)
        said = "".join(e.delta for e in _of_response(log, names.transcript_delta, response_id))
        assert GREETING.startswith(said) and len(said) < len(GREETING)
        later = log.events[ended_at:]
        assert not [e for e in later if getattr(e, "response_id", None) == response_id]
        later_text = "".join(e.delta for e in later if e.type == names.transcript_delta)
        assert "greeting" not in later_text  # the rest of the script was not said in another response
        assert not log.of_type("error"), log.of_type("error")
