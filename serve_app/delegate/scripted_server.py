"""A real OpenAI-compatible chat server that answers from a script: the delegate of tests and benchmarks, and
a way to try tools without an API key.

`ScriptedChatServer` runs Starlette on uvicorn in a background thread (usable from sync and async code);
each request to `POST /v1/chat/completions` takes the next step of its script. The CLI answers every
conversation's first user turn with a call of one tool and everything else with one sentence:

    python -m serve_app.delegate.scripted_server --port 9000 --tool get_weather --arguments '{"city":"Paris"}'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from serve_app.net import free_port

__all__ = [
    "DEFAULT_TEXT",
    "ScriptStep",
    "ScriptedChatServer",
    "Step",
    "first_turn_tool",
    "reply_hang",
    "reply_status",
    "reply_text",
    "reply_tool_calls",
]

DEFAULT_TEXT = "The answer is ready."


@dataclass(frozen=True, slots=True)
class Step:
    """One scripted answer: a chat completion (text and/or tool calls), or a raw `body` with `status`."""

    text: str | None = None
    calls: tuple[tuple[str, str], ...] = ()
    """(function name, arguments as JSON text); each answer gets fresh call ids."""
    status: int = 200
    body: Mapping[str, Any] | str | None = None
    """Sent as it is (a mapping as JSON) instead of a completion, when set."""
    delay_s: float = 0.0


ScriptStep = Step | Callable[[dict[str, Any]], "dict[str, Any] | Step"]
"""A step, or custom logic: called with the request's body, it returns a completion to send or a step."""


def reply_text(text: str, delay_s: float = 0.0) -> Step:
    return Step(text=text, delay_s=delay_s)


def reply_tool_calls(calls: Sequence[tuple[str, Mapping[str, Any] | str]], delay_s: float = 0.0) -> Step:
    """Calls of (name, arguments): a mapping is sent as its JSON, a string as it is (malformed ones too)."""
    encoded = tuple((name, args if isinstance(args, str) else json.dumps(args)) for name, args in calls)
    return Step(calls=encoded, delay_s=delay_s)


def reply_status(status: int, body: Mapping[str, Any] | str) -> Step:
    return Step(status=status, body=body)


def reply_hang(seconds: float) -> Step:
    """Answers only after `seconds` (with a sentence), or when the server stops."""
    return Step(text="This answer comes late.", delay_s=seconds)


def completion(step: Step, *, model: str) -> dict[str, Any]:
    """A `chat.completion` body (valid as openai.types.chat.ChatCompletion)."""
    message: dict[str, Any] = {"role": "assistant", "content": step.text, "refusal": None}
    if step.calls:
        message["tool_calls"] = [
            {
                "id": f"call_{secrets.token_hex(12)}",
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            for name, arguments in step.calls
        ]
    return {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if step.calls else "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)


class ScriptedChatServer:
    """`with ScriptedChatServer([reply_tool_calls(...), reply_text(...)]) as chat:` → `chat.base_url`."""

    def __init__(
        self,
        script: Iterable[ScriptStep] = (),
        *,
        default: ScriptStep | None = None,
        model: str = "scripted",
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        self._script: deque[ScriptStep] = deque(script)
        self._default = default
        self._model = model
        self._lock = threading.Lock()
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        """(headers, body) of every chat request, in arrival order (header names in lower case)."""
        self.port = port if port is not None else free_port()
        self.base_url = f"http://{host}:{self.port}/v1"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Event | None = None
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )
        # Bounded shutdown: a connection its client gave up on must not hold the server open.
        config = uvicorn.Config(
            app, host=host, port=self.port, log_level="warning", access_log=False, timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="scripted-chat", daemon=True)

    def add(self, *steps: ScriptStep) -> None:
        """Append steps to the script (also while serving)."""
        with self._lock:
            self._script.extend(steps)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the scripted chat server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._loop is not None and self._closing is not None:
            self._loop.call_soon_threadsafe(self._closing.set)  # ends waiting steps at once
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> ScriptedChatServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        self._closing = asyncio.Event()
        yield

    async def _wait(self, seconds: float) -> None:
        assert self._closing is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    def _next(self) -> ScriptStep | None:
        with self._lock:
            return self._script.popleft() if self._script else self._default

    async def _chat(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "the request body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "the request body is not a JSON object")
        with self._lock:
            self.requests.append((dict(request.headers), body))
        if body.get("stream"):
            return _error(400, "this scripted server answers only non-streaming requests")
        step = self._next()
        if step is None:
            return PlainTextResponse("script exhausted", status_code=500)
        if not isinstance(step, Step):
            answer = step(body)
            if not isinstance(answer, Step):
                return JSONResponse(answer)
            step = answer
        if step.delay_s > 0:
            await self._wait(step.delay_s)
        if isinstance(step.body, str):
            return PlainTextResponse(step.body, status_code=step.status)
        if step.body is not None:
            return JSONResponse(dict(step.body), status_code=step.status)
        return JSONResponse(completion(step, model=str(body.get("model") or self._model)), step.status)

    async def _models(self, request: Request) -> Response:
        model = {"id": self._model, "object": "model", "created": 0, "owned_by": "scripted"}
        return JSONResponse({"object": "list", "data": [model]})


def first_turn_tool(
    tool: str | None, arguments: Mapping[str, Any] | str, *, text: str = DEFAULT_TEXT, delay_s: float = 0.0
) -> Callable[[dict[str, Any]], Step]:
    """The CLI's logic: a call of `tool` for a conversation's first user turn (or whenever tool_choice
    requires one), a sentence otherwise. It never calls a function the request did not declare, nor when
    tool_choice is "none": a real delegate's reply doing so would be refused."""

    def answer(body: dict[str, Any]) -> Step:
        messages = [m for m in body.get("messages") or () if isinstance(m, Mapping)]
        declared = {
            (t.get("function") or {}).get("name") for t in body.get("tools") or () if isinstance(t, Mapping)
        }
        choice = body.get("tool_choice", "auto")
        required = choice == "required" or isinstance(choice, Mapping)
        first_turn = (
            bool(messages)
            and messages[-1].get("role") == "user"
            and sum(m.get("role") == "user" for m in messages) == 1
            and not any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)
        )
        if tool is not None and tool in declared and choice != "none" and (first_turn or required):
            return reply_tool_calls([(tool, arguments)], delay_s=delay_s)
        return reply_text(text, delay_s=delay_s)

    return answer


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--arguments must be a JSON object")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--delay-s", type=float, default=0.0, help="how long every answer takes")
    parser.add_argument("--tool", help="the function the first user turn of each conversation calls")
    parser.add_argument("--arguments", type=_json_object, default={}, help="its arguments (a JSON object)")
    parser.add_argument("--text", default=DEFAULT_TEXT, help="the sentence of every other answer")
    args = parser.parse_args(argv)
    logic = first_turn_tool(args.tool, args.arguments, text=args.text, delay_s=args.delay_s)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with ScriptedChatServer(default=logic, host=args.host, port=args.port) as server:
        print(f"scripted chat server on {server.base_url}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
