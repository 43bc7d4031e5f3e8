"""The scripted chat server: steps answered in order, requests recorded, every completion valid for the real
openai SDK, and its CLI (the delegate `make serve` can be pointed at) answering as documented."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion

from serve_app.delegate.scripted_server import (
    DEFAULT_TEXT,
    ScriptedChatServer,
    ScriptStep,
    Step,
    completion,
    first_turn_tool,
    reply_hang,
    reply_status,
    reply_text,
    reply_tool_calls,
)
from serve_app.net import free_port

WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


def chat_body(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "delegate-x", "messages": messages, **extra}


def test_steps_are_answered_in_order_and_every_request_is_recorded() -> None:
    custom: dict[str, Any] = completion(reply_text("custom"), model="own")
    script: list[ScriptStep] = [
        reply_text("one"),
        reply_tool_calls([("get_weather", {"city": "Paris"}), ("get_time", "{broken")]),
        reply_status(503, {"error": {"message": "overloaded"}}),
        lambda body: custom,
        lambda body: reply_text(f"saw {len(body['messages'])} messages"),
    ]
    with ScriptedChatServer(script) as chat, httpx.Client(base_url=chat.base_url) as http:
        answers = [
            http.post(
                "/chat/completions",
                json=chat_body([{"role": "user", "content": str(i)}]),
                headers={"X-N": str(i)},
            )
            for i in range(6)
        ]
    assert [a.status_code for a in answers] == [200, 200, 503, 200, 200, 500]
    assert answers[0].json()["choices"][0]["message"]["content"] == "one"
    assert answers[0].json()["model"] == "delegate-x"  # a completion names the requested model
    calls = answers[1].json()["choices"][0]["message"]["tool_calls"]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("get_weather", '{"city": "Paris"}'),
        ("get_time", "{broken"),  # a raw string goes out as it is
    ]
    assert (
        calls[0]["id"] != calls[1]["id"] and answers[1].json()["choices"][0]["finish_reason"] == "tool_calls"
    )
    assert answers[2].json() == {"error": {"message": "overloaded"}}
    assert answers[3].json() == custom
    assert answers[4].json()["choices"][0]["message"]["content"] == "saw 1 messages"
    assert answers[5].text == "script exhausted"
    assert [(h["x-n"], b["messages"][0]["content"]) for h, b in chat.requests] == [
        (str(i), str(i)) for i in range(6)
    ]


def test_a_default_step_answers_once_the_script_is_done_and_steps_can_be_added() -> None:
    chat = ScriptedChatServer([reply_text("scripted")], default=reply_text("default"))
    with chat, httpx.Client(base_url=chat.base_url) as http:
        texts = [http.post("/chat/completions", json=chat_body([])).json() for _ in range(2)]
        chat.add(reply_text("added"))
        texts += [http.post("/chat/completions", json=chat_body([])).json() for _ in range(2)]
    assert [t["choices"][0]["message"]["content"] for t in texts] == [
        "scripted",
        "default",
        "added",
        "default",
    ]


def test_streaming_and_malformed_requests_are_refused_without_taking_a_step() -> None:
    with ScriptedChatServer([reply_text("kept")]) as chat, httpx.Client(base_url=chat.base_url) as http:
        streamed = http.post("/chat/completions", json=chat_body([], stream=True))
        malformed = http.post("/chat/completions", content=b"{nope")
        kept = http.post("/chat/completions", json=chat_body([]))
    assert (streamed.status_code, malformed.status_code) == (400, 400)
    assert "non-streaming" in streamed.json()["error"]["message"]
    assert kept.json()["choices"][0]["message"]["content"] == "kept"


def test_every_completion_is_valid_for_the_real_openai_sdk() -> None:
    steps = [
        reply_text("Sure."),
        reply_tool_calls([("get_weather", {"city": "Paris"})]),
        reply_tool_calls([("get_weather", "not json")]),
        reply_hang(0.1),
    ]
    for step in steps:
        ChatCompletion.model_validate(completion(step, model="m"), strict=True)
    with ScriptedChatServer(steps, model="scripted-1") as chat:
        client = openai.OpenAI(base_url=chat.base_url, api_key="sk-local", max_retries=0)
        replies = [
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}])
            for _ in steps
        ]
        models = [m.id for m in client.models.list()]
        client.close()
    assert replies[0].choices[0].message.content == "Sure."
    function_call = replies[1].choices[0].message.tool_calls[0]  # type: ignore[index]
    assert function_call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(function_call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert replies[3].choices[0].finish_reason == "stop"
    assert models == ["scripted-1"]
    assert chat.requests[0][0]["authorization"] == "Bearer sk-local"


def test_a_hanging_step_answers_late_and_stop_does_not_wait_for_it() -> None:
    with ScriptedChatServer([reply_hang(0.3)]) as chat, httpx.Client(base_url=chat.base_url) as http:
        start = time.monotonic()
        late = http.post("/chat/completions", json=chat_body([]))
        assert 0.3 <= time.monotonic() - start < 2 and late.status_code == 200
    server = ScriptedChatServer([reply_hang(60)])
    server.start()
    thread = threading.Thread(
        target=lambda: httpx.post(f"{server.base_url}/chat/completions", json=chat_body([]), timeout=60),
        daemon=True,
    )
    thread.start()
    while not server.requests:
        time.sleep(0.01)
    start = time.monotonic()
    server.stop()
    thread.join(timeout=10)
    assert time.monotonic() - start < 5 and not thread.is_alive()


@pytest.mark.parametrize(
    ("messages", "extra", "calls"),
    [
        ([{"role": "user", "content": "Weather?"}], {"tools": [WEATHER_TOOL]}, True),
        (
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"}],
            {"tools": [WEATHER_TOOL], "tool_choice": "auto"},
            True,
        ),
        ([{"role": "user", "content": "Weather?"}], {"tools": [WEATHER_TOOL], "tool_choice": "none"}, False),
        ([{"role": "user", "content": "Weather?"}], {}, False),  # not declared: never called
        (
            [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function"}]},
                {"role": "tool", "tool_call_id": "c", "content": "sunny"},
            ],
            {"tools": [WEATHER_TOOL]},
            False,
        ),
        (
            [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Weather?"},
            ],
            {"tools": [WEATHER_TOOL]},
            False,
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            {"tools": [WEATHER_TOOL], "tool_choice": "required"},
            True,
        ),
    ],
)
def test_first_turn_tool_calls_only_where_a_delegate_may(
    messages: list[dict[str, Any]], extra: dict[str, Any], calls: bool
) -> None:
    step = first_turn_tool("get_weather", {"city": "Paris"}, text="Done.")(chat_body(messages, **extra))
    expected = Step(calls=(("get_weather", '{"city": "Paris"}'),)) if calls else Step(text="Done.")
    assert step == expected


def test_the_cli_answers_a_first_turn_with_the_tool_and_then_with_its_sentence() -> None:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "serve_app.delegate.scripted_server",
        "--port",
        str(port),
        "--delay-s",
        "0.3",
        "--tool",
        "get_weather",
        "--arguments",
        '{"city": "Paris"}',
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == f"scripted chat server on http://127.0.0.1:{port}/v1"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", timeout=10) as http:
            assert http.get("/models").status_code == 200
            start = time.monotonic()
            first = http.post(
                "/chat/completions", json=chat_body([{"role": "user", "content": "Hi"}], tools=[WEATHER_TOOL])
            )
            took = time.monotonic() - start
            call = first.json()["choices"][0]["message"]["tool_calls"][0]
            history: list[dict[str, Any]] = [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
            ]
            second = http.post("/chat/completions", json=chat_body(history, tools=[WEATHER_TOOL]))
        assert 0.3 <= took < 3
        assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == (
            "get_weather",
            {"city": "Paris"},
        )
        ChatCompletion.model_validate(second.json(), strict=True)
        assert second.json()["choices"][0]["message"]["content"] == DEFAULT_TEXT
    finally:
        process.terminate()
        assert process.wait(timeout=15) == 0


def test_the_cli_refuses_arguments_that_are_not_an_object() -> None:
    command = [
        sys.executable,
        "-m",
        "serve_app.delegate.scripted_server",
        "--tool",
        "x",
        "--arguments",
        "[1]",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "JSON object" in result.stderr
