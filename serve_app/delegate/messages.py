"""The delegate's wire mapping, sans I/O: a Realtime session (instructions, conversation items, tools,
tool_choice) as a Chat Completions request, and the delegate's reply as text and checked tool calls.

Items are taken as they are on the Realtime wire, in either dialect (GA `input_text`/`input_audio`/
`output_text`/`output_audio` content parts, beta `text`/`audio`/`input_text`/`input_audio`).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PENDING_OUTPUT",
    "DelegateError",
    "DelegateReply",
    "ToolCall",
    "declared_functions",
    "parse_reply",
    "request_body",
]

PENDING_OUTPUT = "(no output yet: the call is still running)"
"""The tool message of a call whose `function_call_output` has not come: Chat APIs reject a `tool_calls`
message not answered for every id, and dropping the call would invite the delegate to make it again."""

_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_AUDIO_PARTS = frozenset({"input_audio", "output_audio", "audio"})
_ROLES = frozenset({"system", "user", "assistant"})


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str
    """JSON text of an object, as the delegate wrote it."""


@dataclass(frozen=True, slots=True)
class DelegateReply:
    text: str
    calls: tuple[ToolCall, ...]


class DelegateError(Exception):
    """A delegate call that gave no usable answer; `code` is a key of serve_app.protocol.errors.ERRORS
    (`delegate_timeout`, `delegate_failed`, `delegate_invalid_reply`)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def _get(obj: object, key: str) -> Any:
    """A field of a wire dict or of a pydantic model of one."""
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def declared_functions(tools: Sequence[Mapping[str, Any]]) -> frozenset[str]:
    """The names of the session's function tools (other tool types, e.g. mcp, are not the delegate's)."""
    names = (_get(tool, "name") for tool in tools if _get(tool, "type") == "function")
    return frozenset(name for name in names if isinstance(name, str))


def _tool_choice(tool_choice: object) -> tuple[str, str | None]:
    """(mode, function name): mode is auto/none/required or `function` (with its name). None and choices
    of tools the delegate does not see (mcp) are `auto`."""
    if isinstance(tool_choice, str):
        return (tool_choice, None) if tool_choice in ("none", "required") else ("auto", None)
    name = _get(tool_choice, "name")
    if _get(tool_choice, "type") == "function" and isinstance(name, str):
        return "function", name
    return "auto", None


def _text(content: object) -> str:
    """The words of a message's content parts: text as written, audio by its transcript."""
    if isinstance(content, str):
        return content if content.strip() else ""
    pieces: list[str] = []
    for part in content if isinstance(content, Sequence) else ():
        kind = _get(part, "type")
        value = _get(part, "text") if kind in _TEXT_PARTS else None
        if value is None and kind in _AUDIO_PARTS:
            value = _get(part, "transcript")
        if isinstance(value, str) and value.strip():
            pieces.append(value)
    return "\n".join(pieces)


def _messages(items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    calls: dict[str, dict[str, Any]] = {}
    """call_id → its assistant `tool_calls` message, where its output is placed."""
    outputs: dict[int, list[dict[str, Any]]] = {}
    """The tool messages placed after each `tool_calls` message, by that message's id()."""
    open_calls: dict[str, Any] | None = None
    """The `tool_calls` message that a directly following function_call joins."""
    for item in items:
        kind = _get(item, "type") or ("message" if _get(item, "role") else None)
        if kind != "function_call":
            open_calls = None
        if kind == "message" and (role := _get(item, "role")) in _ROLES:
            if text := _text(_get(item, "content")):
                messages.append({"role": role, "content": text})
        elif kind == "function_call":
            call_id = str(_get(item, "call_id") or "")
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": _get(item, "name") or "", "arguments": _get(item, "arguments") or "{}"},
            }
            if open_calls is None:
                open_calls = {"role": "assistant", "content": None, "tool_calls": []}
                messages.append(open_calls)
                outputs[id(open_calls)] = []
            open_calls["tool_calls"].append(call)
            calls[call_id] = open_calls
        elif kind == "function_call_output":
            call_id = str(_get(item, "call_id") or "")
            owner = calls.get(call_id)
            if owner is None:
                continue  # its call is gone from the conversation; a tool message without one is rejected
            output = _get(item, "output")
            content = output if isinstance(output, str) else ""
            outputs[id(owner)].append({"role": "tool", "tool_call_id": call_id, "content": content})
    # Chat APIs want each call's tool message right after its `tool_calls` message, whatever came between.
    ordered: list[dict[str, Any]] = []
    for message in messages:
        ordered.append(message)
        if "tool_calls" in message:
            answered = outputs[id(message)]
            ids = {m["tool_call_id"] for m in answered}
            ordered.extend(answered)
            ordered.extend(
                {"role": "tool", "tool_call_id": call["id"], "content": PENDING_OUTPUT}
                for call in message["tool_calls"]
                if call["id"] not in ids
            )
    return ordered


def _chat_tools(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    chat: list[dict[str, Any]] = []
    for tool in tools:
        if _get(tool, "type") != "function" or not isinstance(_get(tool, "name"), str):
            continue
        function = {key: value for key in ("name", "description", "parameters") if (value := _get(tool, key))}
        chat.append({"type": "function", "function": function})
    return chat


def request_body(
    *,
    model: str,
    instructions: str | None,
    items: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]],
    tool_choice: object,
    max_tokens: int | None,
) -> dict[str, Any]:
    """A non-streaming Chat Completions request for the conversation so far."""
    messages = [{"role": "system", "content": instructions}] if instructions else []
    body: dict[str, Any] = {"model": model, "messages": messages + _messages(items), "stream": False}
    if chat_tools := _chat_tools(tools):
        body["tools"] = chat_tools
        mode, name = _tool_choice(tool_choice)
        body["tool_choice"] = {"type": "function", "function": {"name": name}} if name else mode
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def _invalid(detail: str) -> DelegateError:
    return DelegateError("delegate_invalid_reply", detail)


def _arguments(name: str, raw: object) -> str:
    """The call's arguments as the delegate wrote them, once they are known to be a JSON object."""
    if isinstance(raw, Mapping):  # some servers send the object itself rather than its JSON text
        return json.dumps(raw, separators=(",", ":"))
    if isinstance(raw, str) and not raw.strip():
        return "{}"  # a call of a function without parameters, as some models write it
    try:
        parsed = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise _invalid(f"the arguments of its call of {name!r} are not a JSON object: {str(raw)[:200]!r}")
    assert isinstance(raw, str)
    return raw


def _call(raw: object) -> ToolCall:
    function = _get(raw, "function")
    name = _get(function, "name")
    if _get(raw, "type") not in (None, "function") or not isinstance(name, str) or not name:
        raise _invalid(f"a tool call that is not a function call with a name: {str(raw)[:200]!r}")
    call_id = _get(raw, "id")
    if not isinstance(call_id, str) or not call_id:
        call_id = f"call_{secrets.token_hex(12)}"
    return ToolCall(call_id, name, _arguments(name, _get(function, "arguments")))


def parse_reply(body: Mapping[str, Any], *, declared: frozenset[str], tool_choice: object) -> DelegateReply:
    """The delegate's answer, or `delegate_invalid_reply` if it cannot be used as it is: this session's
    conversation only ever gets calls of declared functions, as `tool_choice` allows."""
    choices = body.get("choices")
    if not isinstance(choices, Sequence) or isinstance(choices, str) or not choices:
        raise _invalid("the reply has no choices")
    message = _get(choices[0], "message")
    if not isinstance(message, Mapping):
        raise _invalid("the reply's first choice has no message")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise _invalid(f"the reply's content is not text: {str(content)[:200]!r}")
    raw_calls = message.get("tool_calls") or ()
    if not isinstance(raw_calls, Sequence) or isinstance(raw_calls, str):
        raise _invalid(f"the reply's tool_calls is not a list: {str(raw_calls)[:200]!r}")
    calls = tuple(_call(raw) for raw in raw_calls)
    mode, required_name = _tool_choice(tool_choice)
    if calls and mode == "none":
        raise _invalid(f"it called {calls[0].name!r} although tool_choice is 'none'")
    for call in calls:
        if call.name not in declared:
            raise _invalid(f"it called {call.name!r}, a function this session did not declare")
        if required_name is not None and call.name != required_name:
            raise _invalid(f"it called {call.name!r} although tool_choice names {required_name!r}")
    if not calls and required_name is not None:
        raise _invalid(f"it called no function although tool_choice names {required_name!r}")
    if not calls and mode == "required" and declared:
        raise _invalid("it called no function although tool_choice is 'required'")
    return DelegateReply(content or "", calls)
