"""The delegate's sans-I/O mapping: Realtime items/tools/tool_choice of both dialects as a Chat Completions
request (valid under the SDK's request types), and the rules a reply must pass to be used."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any

import pytest
from openai.types import realtime as ga
from openai.types.beta import realtime as beta
from openai.types.chat import completion_create_params
from openai.types.responses import ToolChoiceFunction, ToolChoiceMcp
from pydantic import TypeAdapter

from serve_app.delegate.messages import (
    PENDING_OUTPUT,
    DelegateError,
    DelegateReply,
    ToolCall,
    declared_functions,
    parse_reply,
    request_body,
)
from serve_app.delegate.scripted_server import completion, reply_text, reply_tool_calls

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME = {"type": "function", "name": "get_time", "description": "The time.", "parameters": {"type": "object"}}
MCP = {"type": "mcp", "server_label": "docs", "server_url": "https://example.com/mcp"}

GA_ITEMS: list[dict[str, Any]] = [
    {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Be brief."}]},
    {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": "Weather in Paris?"}],
    },
    {"type": "message", "role": "user", "content": [{"type": "input_audio", "transcript": None}]},
    {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_audio", "transcript": "Let me see."}],
    },
    {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
    {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "call_1", "output": '{"sky": "clear"}'},
    {"type": "function_call_output", "call_id": "call_2", "output": "12:00"},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Clear, at noon."}]},
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Thanks!"}]},
]
GA_MESSAGES = [
    {"role": "system", "content": "You are a helpful voice."},
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "Let me see."},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'},
    {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
    {"role": "assistant", "content": "Clear, at noon."},
    {"role": "user", "content": "Thanks!"},
]

_REQUEST = TypeAdapter(completion_create_params.CompletionCreateParamsNonStreaming)


def assert_valid_request(body: dict[str, Any]) -> None:
    """Valid under the SDK's own request type (its lists validate lazily, so they are consumed here)."""
    validated = _REQUEST.validate_python(body, strict=True)
    assert len(list(validated["messages"])) == len(body["messages"])
    assert len(list(validated.get("tools", ()))) == len(body.get("tools", ()))


def body(items: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "instructions": None,
        "items": items,
        "tools": [],
        "tool_choice": "auto",
        "max_tokens": None,
    }
    result = request_body(**{**options, **overrides})
    assert_valid_request(result)
    return result


def test_ga_items_become_chat_messages_with_calls_merged_and_outputs_as_tool_messages() -> None:
    for item in GA_ITEMS:  # the test's items are what the GA wire carries
        TypeAdapter(ga.ConversationItem).validate_python(item)
    result = body(GA_ITEMS, instructions="You are a helpful voice.", tools=[WEATHER, TIME], max_tokens=64)
    assert result["messages"] == GA_MESSAGES
    assert (result["model"], result["stream"], result["max_tokens"]) == ("gpt-4o-mini", False, 64)


def test_beta_items_become_the_same_messages() -> None:
    items: list[dict[str, Any]] = [
        {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Be brief."}]},
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": "Hello there"}],
        },
        {"type": "message", "role": "user", "content": [{"type": "input_audio"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "audio", "transcript": "Hi!"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "How can I help?"}]},
        {"type": "message", "role": "user", "content": [{"type": "item_reference", "id": "item_1"}]},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Look"},
                {"type": "input_audio", "transcript": "this up"},
            ],
        },
        {"type": "function_call", "call_id": "c1", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "noon"},
    ]
    for item in items:
        beta.ConversationItem.model_validate(item, strict=True)
    assert body(items, instructions="")["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "assistant", "content": "How can I help?"},
        {"role": "user", "content": "Look\nthis up"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "noon"},
    ]


def test_pydantic_items_and_tools_are_read_like_their_wire_dicts() -> None:
    items = [TypeAdapter(ga.ConversationItem).validate_python(item) for item in GA_ITEMS]
    tools = [ga.RealtimeFunctionTool.model_validate(tool) for tool in (WEATHER, TIME)]
    result = body(items, instructions="You are a helpful voice.", tools=tools)  # type: ignore[arg-type]
    assert result["messages"] == GA_MESSAGES
    assert [t["function"]["name"] for t in result["tools"]] == ["get_weather", "get_time"]


def test_calls_separated_by_an_output_stay_separate_turns_of_the_delegate() -> None:
    items = [
        {"type": "function_call", "call_id": "a", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "a", "output": "noon"},
        {"type": "function_call", "call_id": "b", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "b", "output": "one"},
    ]
    roles = [
        (m["role"], m.get("tool_call_id"), len(m.get("tool_calls", ()))) for m in body(items)["messages"]
    ]
    assert roles == [("assistant", None, 1), ("tool", "a", 0), ("assistant", None, 1), ("tool", "b", 0)]


def test_outputs_follow_their_call_pending_calls_are_marked_and_orphan_outputs_dropped() -> None:
    """Chat APIs reject a tool message not right after its call and a call without a tool message."""
    items: list[dict[str, Any]] = [
        {"type": "function_call", "call_id": "a", "name": "get_time", "arguments": "{}"},
        {"type": "function_call", "call_id": "b", "name": "get_weather", "arguments": '{"city":"Rome"}'},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Still there?"}]},
        {"type": "function_call_output", "call_id": "a", "output": "noon"},
        {"type": "function_call_output", "call_id": "gone", "output": "lost"},
    ]
    messages = body(items)["messages"]
    assert messages[1:] == [
        {"role": "tool", "tool_call_id": "a", "content": "noon"},
        {"role": "tool", "tool_call_id": "b", "content": PENDING_OUTPUT},
        {"role": "user", "content": "Still there?"},
    ]


def test_items_with_nothing_to_say_are_skipped_and_empty_instructions_omitted() -> None:
    items: list[dict[str, Any]] = [
        {"type": "message", "role": "user", "content": [{"type": "input_audio", "transcript": "  "}]},
        {"type": "message", "role": "assistant", "content": []},
        {"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]},
        {"type": "mcp_call", "id": "m1", "server_label": "docs", "name": "x", "arguments": "{}"},
    ]
    for instructions in (None, ""):
        result = request_body(
            model="m", instructions=instructions, items=items, tools=[], tool_choice="auto", max_tokens=None
        )
        assert result == {"model": "m", "messages": [], "stream": False}


def test_tools_map_to_chat_functions_and_other_tool_types_are_not_the_delegates() -> None:
    result = body([], tools=[WEATHER, MCP, {"type": "function", "name": "ping"}])
    assert result["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": WEATHER["parameters"],
            },
        },
        {"type": "function", "function": {"name": "ping"}},
    ]
    assert "tools" not in body([], tools=[MCP], tool_choice="required")
    assert "tool_choice" not in body([], tools=[], tool_choice="required")


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        (None, "auto"),
        ({"type": "function", "name": "get_time"}, {"type": "function", "function": {"name": "get_time"}}),
        (
            ToolChoiceFunction(type="function", name="get_time"),
            {"type": "function", "function": {"name": "get_time"}},
        ),
        (
            SimpleNamespace(type="function", name="get_time"),
            {"type": "function", "function": {"name": "get_time"}},
        ),
        (ToolChoiceMcp(type="mcp", server_label="docs", name="x"), "auto"),
    ],
)
def test_tool_choice_shapes(choice: object, expected: object) -> None:
    assert body([], tools=[WEATHER, TIME], tool_choice=choice)["tool_choice"] == expected


def test_declared_functions_are_the_function_tools() -> None:
    assert declared_functions([WEATHER, TIME, MCP]) == frozenset({"get_weather", "get_time"})
    assert declared_functions([]) == frozenset()


def reply(content: str | None = None, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls is not None:
        message["tool_calls"] = calls
    return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


def call(name: str, arguments: Any = "{}", call_id: str = "call_x") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


DECLARED = frozenset({"get_weather", "get_time"})


def test_a_text_reply_and_a_reply_with_several_calls() -> None:
    assert parse_reply(reply("It is sunny."), declared=DECLARED, tool_choice="auto") == DelegateReply(
        "It is sunny.", ()
    )
    assert parse_reply(reply(None), declared=DECLARED, tool_choice="auto") == DelegateReply("", ())
    parsed = parse_reply(
        reply(None, [call("get_weather", '{ "city" : "Paris" }', "c1"), call("get_time", "", "c2")]),
        declared=DECLARED,
        tool_choice="required",
    )
    assert parsed.calls == (  # the arguments as written; an empty one is the empty object
        ToolCall("c1", "get_weather", '{ "city" : "Paris" }'),
        ToolCall("c2", "get_time", "{}"),
    )


def test_what_the_scripted_server_sends_parses() -> None:
    step = reply_tool_calls([("get_weather", {"city": "Oslo"})])
    parsed = parse_reply(completion(step, model="m"), declared=DECLARED, tool_choice="auto")
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [("get_weather", {"city": "Oslo"})]
    assert parsed.calls[0].call_id.startswith("call_")
    text = parse_reply(completion(reply_text("Done."), model="m"), declared=DECLARED, tool_choice="none")
    assert text == DelegateReply("Done.", ())


def test_a_call_without_an_id_gets_one() -> None:
    ids = {
        parse_reply(reply(None, [call("get_time", call_id="")]), declared=DECLARED, tool_choice="auto")
        .calls[0]
        .call_id
        for _ in range(2)
    }
    assert len(ids) == 2 and all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in ids)


def test_arguments_sent_as_an_object_are_taken_as_its_json() -> None:
    parsed = parse_reply(
        reply(None, [call("get_weather", {"city": "Rome"})]), declared=DECLARED, tool_choice="auto"
    )
    assert json.loads(parsed.calls[0].arguments) == {"city": "Rome"}


@pytest.mark.parametrize(
    ("message", "tool_choice", "words"),
    [
        (reply(None, [call("get_weather", "{not json")]), "auto", ["'get_weather'", "not a JSON object"]),
        (reply(None, [call("get_weather", "[1, 2]")]), "auto", ["'get_weather'", "not a JSON object"]),
        (reply(None, [call("get_weather", 7)]), "auto", ["'get_weather'", "not a JSON object"]),
        (reply(None, [call("delete_everything")]), "auto", ["'delete_everything'", "did not declare"]),
        (reply(None, [call("get_time")]), "none", ["'get_time'", "'none'"]),
        (reply("Hello."), "required", ["no function", "'required'"]),
        (reply("Hello."), {"type": "function", "name": "get_time"}, ["no function", "'get_time'"]),
        (
            reply(None, [call("get_weather", '{"city":"Paris"}')]),
            ToolChoiceFunction(type="function", name="get_time"),
            ["'get_weather'", "'get_time'"],
        ),
        (reply(None, [{"id": "c", "type": "function", "function": {"arguments": "{}"}}]), "auto", ["name"]),
        (reply(None, [{"id": "c", "type": "custom", "custom": {"name": "x"}}]), "auto", ["not a function"]),
        ({"choices": []}, "auto", ["no choices"]),
        ({"object": "error"}, "auto", ["no choices"]),
        ({"choices": [{"index": 0}]}, "auto", ["no message"]),
        (reply(["parts"]), "auto", ["not text"]),  # type: ignore[arg-type]
    ],
)
def test_replies_that_cannot_be_used(message: dict[str, Any], tool_choice: object, words: list[str]) -> None:
    with pytest.raises(DelegateError) as raised:
        parse_reply(message, declared=DECLARED, tool_choice=tool_choice)
    assert raised.value.code == "delegate_invalid_reply"
    for word in words:
        assert word in raised.value.detail


def test_required_without_declared_functions_accepts_text() -> None:
    """The request carries no tools then (nor tool_choice): a text answer is all the delegate can give."""
    assert parse_reply(reply("Hi."), declared=frozenset(), tool_choice="required") == DelegateReply("Hi.", ())


def test_a_reply_and_its_outputs_round_trip_into_the_next_request() -> None:
    parsed = parse_reply(
        reply(None, [call("get_weather", '{"city":"Paris"}', "c9")]), declared=DECLARED, tool_choice="auto"
    )
    items = [
        {"type": "function_call", "call_id": c.call_id, "name": c.name, "arguments": c.arguments}
        for c in parsed.calls
    ] + [{"type": "function_call_output", "call_id": "c9", "output": "sunny"}]
    assert body(items, tools=[WEATHER])["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "c9",
        "content": "sunny",
    }
