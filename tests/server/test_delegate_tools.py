"""Tools through a delegate, end to end: real clients (the openai-agents SDK's RealtimeAgent, the openai SDK
in both dialects) speak to the in-process server, whose delegate is a local OpenAI-compatible chat server
this module scripts. A spoken user turn (server VAD + pocketsphinx) is answered with a call of the client's
tool; the client runs it and sends its output; the delegate's sentence is then said by Moshi, and arrives
as the transcript of a response with audio."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI

from serve_app.config import AppConfig, ModelConfig, RealtimeLimits
from serve_app.constants import FRAME_S, FRAME_SAMPLES, SAMPLE_RATE
from serve_app.delegate.config import DelegateConfig
from serve_app.delegate.scripted_server import (
    ScriptedChatServer,
    first_turn_tool,
    reply_hang,
    reply_status,
    reply_text,
    reply_tool_calls,
)
from serve_app.engine.spec import ModelSpec
from serve_app.session.settings import SessionSettings
from tests.fixtures.speech import sentences, sentences_pcm16
from tests.server.conftest import RunningServer, serve_in_process

SENTENCE = "It is sunny in Paris today."
ARGUMENTS = {"city": "Paris"}
HELD = "moshi-sft"
"""Delegate mode: Moshi says only the delegate's words."""
DUPLEX = "moshi-base"
"""Duplex mode: Moshi talks freely, the delegate's answers are said when they come."""


@pytest.fixture(scope="module")
def chat() -> Iterator[ScriptedChatServer]:
    with ScriptedChatServer(default=first_turn_tool("get_weather", ARGUMENTS, text=SENTENCE)) as server:
        yield server


@pytest.fixture(scope="module")
def server(chat: ScriptedChatServer) -> Iterator[RunningServer]:
    lenient = RealtimeLimits(admit_fraction=None, max_lag_ms=5000)
    delegate = DelegateConfig(base_url=chat.base_url, model="scripted", timeout_s=2.0, floor_wait_ms=600)
    config = AppConfig(
        models=(
            ModelConfig(
                id=HELD,
                spec=ModelSpec(tiny_seed=1),
                slots=2,
                realtime=lenient,
                delegate=delegate.model_copy(update={"mode": "delegate"}),
            ),
            ModelConfig(id=DUPLEX, spec=ModelSpec(tiny_seed=2), slots=2, realtime=lenient),
        ),
        delegate=delegate,  # server-wide: moshi-base takes it (duplex)
        session=SessionSettings(utterance_silence_ms=480),
        server={"api_keys": (), "max_loop_lag_ms": None},
    )
    with serve_in_process(config) as running:
        yield running


def first_sentence() -> bytes:
    """The fixture's first spoken sentence, then silence enough for server VAD to end the turn."""
    first = sentences()[0]
    return sentences_pcm16()[: (first.end_ms + 200) * SAMPLE_RATE // 1000 * 2]


class Microphone:
    """Real-time paced 80 ms PCM16 chunks: the sentence once, then silence for as long as it runs (Moshi
    steps only on input audio, so it can say an answer only while audio flows)."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        speech = first_sentence()
        step = 2 * FRAME_SAMPLES
        began = time.monotonic()
        index = 0
        while True:
            at = index * step
            chunk = speech[at : at + step] if at < len(speech) else bytes(step)
            await asyncio.sleep(max(0.0, began + index * FRAME_S - time.monotonic()))
            await self._send(chunk)
            index += 1

    def __enter__(self) -> Microphone:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def _audible(b64_chunks: list[str]) -> bool:
    pcm = np.frombuffer(b"".join(base64.b64decode(c) for c in b64_chunks), dtype="<i2")
    return len(pcm) > 0 and int(np.abs(pcm).max()) > 0


# The Agents SDK ---------------------------------------------------------------------------------------


async def test_a_realtime_agent_runs_its_tool_and_hears_the_answer(
    server: RunningServer, chat: ScriptedChatServer
) -> None:
    from agents import function_tool
    from agents.realtime import RealtimeAgent, RealtimeRunner

    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return json.dumps({"city": city, "sky": "sunny"})

    agent = RealtimeAgent(name="Weather", instructions="Answer weather questions.", tools=[get_weather])
    runner = RealtimeRunner(
        agent,
        config={
            "model_settings": {
                "model_name": HELD,
                "turn_detection": {"type": "server_vad", "interrupt_response": True},
                "input_audio_transcription": {"model": "pocketsphinx"},
            }
        },
    )
    requests_before = len(chat.requests)
    session = await runner.run(
        model_config={"url": f"{server.ws_base}/realtime?model={HELD}", "api_key": "sk-test"}
    )
    audio_after_tool = 0
    transcript = ""
    kinds: list[str] = []
    async with session:
        with Microphone(session.send_audio):
            async with asyncio.timeout(60):
                async for event in session:
                    kinds.append(event.type)
                    if event.type == "error":
                        raise AssertionError(f"the session reported an error: {event.error}")
                    if event.type == "audio" and calls:
                        audio_after_tool += 1
                    if event.type == "history_updated":
                        for item in event.history:
                            if getattr(item, "role", None) != "assistant":
                                continue
                            for part in getattr(item, "content", []):
                                transcript = getattr(part, "transcript", None) or transcript
                    if transcript == SENTENCE and audio_after_tool:
                        break
    assert calls == ["Paris"], kinds  # the SDK ran the tool with the delegate's arguments
    assert "tool_start" in kinds and "tool_end" in kinds
    assert transcript == SENTENCE
    assert audio_after_tool > 0
    # The delegate read the user's turn, then the tool's output.
    first, second = (body for _, body in chat.requests[requests_before : requests_before + 2])
    assert first["messages"][0] == {"role": "system", "content": "Answer weather questions."}
    assert first["messages"][-1]["role"] == "user" and first["messages"][-1]["content"]
    assert [t["function"]["name"] for t in first["tools"]] == ["get_weather"]
    assert second["messages"][-1]["role"] == "tool"
    assert json.loads(second["messages"][-1]["content"]) == {"city": "Paris", "sky": "sunny"}


# The openai SDK's raw events, both dialects ------------------------------------------------------------


WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


async def _tool_round_trip(conn: Any, *, beta: bool, model: str) -> dict[str, list[Any]]:
    """Speak a turn; answer the function call the server makes; collect events until the spoken answer's
    response is done. Returns the events by type."""
    names = {
        "audio": "response.audio.delta" if beta else "response.output_audio.delta",
        "transcript_done": "response.audio_transcript.done"
        if beta
        else "response.output_audio_transcript.done",
    }
    seen: dict[str, list[Any]] = {}
    created = await conn.recv()
    assert created.type == "session.created"
    if beta:
        update: dict[str, Any] = {
            "tools": [WEATHER_TOOL],
            "tool_choice": "auto",
            "turn_detection": {"type": "server_vad"},
            "input_audio_transcription": {"model": "pocketsphinx"},
        }
    else:
        update = {
            "type": "realtime",
            "tools": [WEATHER_TOOL],
            "tool_choice": "auto",
            "audio": {"input": {"turn_detection": {"type": "server_vad"}}},
        }
    await conn.session.update(session=update)

    async def send(chunk: bytes) -> None:
        await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())

    answered = False
    with Microphone(send):
        async with asyncio.timeout(60):
            while True:
                event = await conn.recv()
                seen.setdefault(event.type, []).append(event)
                assert event.type != "error", event
                if event.type == "response.function_call_arguments.done" and not answered:
                    assert event.call_id and json.loads(event.arguments) == ARGUMENTS
                    output = {"city": "Paris", "sky": "sunny"}
                    await conn.conversation.item.create(
                        item={
                            "type": "function_call_output",
                            "call_id": event.call_id,
                            "output": json.dumps(output),
                        }
                    )
                if (
                    event.type == "response.done"
                    and seen.get("response.function_call_arguments.done")
                    and not answered
                ):
                    answered = True
                    await conn.response.create()
                spoken = [e for e in seen.get(names["transcript_done"], []) if e.transcript == SENTENCE]
                if event.type == "response.done" and answered and spoken:
                    assert event.response.id == spoken[0].response_id
                    assert event.response.status == "completed"
                    break
    assert seen[names["audio"]], "the answer is spoken"
    return seen


async def test_the_ga_sdk_sees_the_function_calling_flow_then_the_spoken_answer(
    server: RunningServer,
) -> None:
    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=server.ws_base)
    async with client.realtime.connect(model=HELD) as conn:
        seen = await _tool_round_trip(conn, beta=False, model=HELD)
    (call_item,) = [e.item for e in seen["response.output_item.done"] if e.item.type == "function_call"]
    assert call_item.name == "get_weather" and call_item.status == "completed"
    (done,) = seen["response.function_call_arguments.done"]
    assert done.name == "get_weather"
    assert len(seen["response.created"]) == len(seen["response.done"])


async def test_the_beta_dialect_sees_the_same_flow(server: RunningServer) -> None:
    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=server.ws_base)
    async with client.beta.realtime.connect(model=DUPLEX) as conn:
        seen = await _tool_round_trip(conn, beta=True, model=DUPLEX)
    assert any(e.item.type == "function_call" for e in seen["conversation.item.created"])
    calls = [o for e in seen["response.done"] for o in e.response.output if o.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather"]


# A delegate that fails -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "code", "tool_choice"),
    [
        (reply_hang(5.0), "delegate_timeout", "auto"),
        (reply_status(500, {"error": {"message": "boom"}}), "delegate_failed", "auto"),
        (reply_tool_calls([("get_weather", "{not json")]), "delegate_invalid_reply", "auto"),
        (reply_tool_calls([("delete_everything", {})]), "delegate_invalid_reply", "auto"),
        # A delegate that ignores tool_choice: its call under "none", its text under "required".
        (reply_tool_calls([("get_weather", ARGUMENTS)]), "delegate_invalid_reply", "none"),
        (reply_text("No tool for you."), "delegate_invalid_reply", "required"),
    ],
    ids=[
        "timeout",
        "http-500",
        "malformed-arguments",
        "undeclared-function",
        "call-under-none",
        "text-under-required",
    ],
)
async def test_a_failing_delegate_costs_the_answer_not_the_audio(
    server: RunningServer, chat: ScriptedChatServer, step: Any, code: str, tool_choice: str
) -> None:
    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=server.ws_base)
    async with client.realtime.connect(model=DUPLEX) as conn:
        assert (await conn.recv()).type == "session.created"
        update = {"type": "realtime", "tools": [WEATHER_TOOL], "tool_choice": tool_choice}
        await conn.session.update(session=update)  # type: ignore[arg-type]
        assert (await conn.recv()).type == "session.updated"
        chat.add(step)
        asked = len(chat.requests)
        await conn.response.create()
        seen: dict[str, list[Any]] = {}

        async def send(chunk: bytes) -> None:
            await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())

        with Microphone(send):
            async with asyncio.timeout(30):
                while not seen.get("error"):
                    event = await conn.recv()
                    seen.setdefault(event.type, []).append(event)
                # The delegate's reply became no function_call item.
                assert "response.function_call_arguments.done" not in seen
                # After the error, the session goes on: Moshi's audio still flows (duplex mode).
                while len(seen.get("response.output_audio.delta", [])) < 5:
                    event = await conn.recv()
                    seen.setdefault(event.type, []).append(event)
    (error,) = seen["error"]
    assert error.error.code == code and error.error.event_id is None
    assert chat.requests[asked][1].get("tool_choice") == tool_choice  # what the delegate was told
    assert "sk-" not in error.error.message
    failed = [e for e in seen["response.done"] if e.response.status == "failed"]
    assert len(failed) == 1 and failed[0].response.status_details.error.code == code
    assert len(seen["response.created"]) >= len(seen["response.done"]) >= 1
