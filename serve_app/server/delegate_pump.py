"""The delegate in the socket shell: each ask of a session (serve_app/session/delegation.py) is one Chat
Completions call, run as its own task so the audio pumps never wait for it; its outcome goes back to the
session, which tells the client.

A slow, failing or unreachable delegate costs the session that answer and nothing else: every outcome,
an exception included, becomes `delegate_replied` or `delegate_failed`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from serve_app.delegate.client import DelegateClient
from serve_app.delegate.config import DelegateConfig
from serve_app.delegate.messages import DelegateError, declared_functions, parse_reply, request_body
from serve_app.protocol.errors import render
from serve_app.server.observer import SessionObserver
from serve_app.session.delegation import DelegateAsk
from serve_app.session.session import RealtimeSession

logger = logging.getLogger(__name__)


class DelegatePump:
    def __init__(
        self,
        client: DelegateClient | None,
        config: DelegateConfig | None,
        session: RealtimeSession,
        flush: Callable[[], None],
        obs: SessionObserver,
    ) -> None:
        self._client = client
        self._config = config
        self._session = session
        self._flush = flush
        self._obs = obs
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, asks: list[DelegateAsk]) -> None:
        for ask in asks:
            task = asyncio.get_running_loop().create_task(self._answer(ask))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _answer(self, ask: DelegateAsk) -> None:
        session, model_id = self._session, self._session.model_id
        started = time.monotonic()
        try:
            if self._client is None or self._config is None:
                raise DelegateError("delegate_failed", "no delegate is configured for this model")
            body = request_body(
                model=self._config.model,
                instructions=ask.instructions,
                items=ask.items,
                tools=ask.tools,
                tool_choice=ask.tool_choice,
                max_tokens=self._config.max_tokens,
            )
            reply = parse_reply(
                await self._client.complete(body),
                declared=declared_functions(ask.tools),
                tool_choice=ask.tool_choice,
            )
        except DelegateError as error:
            self._obs.delegate_call(model_id, error.code, time.monotonic() - started)
            session.delegate_failed(ask.ask_id, error.code, self._message(error))
        except Exception as error:  # a bug must not leave a response open either
            logger.exception("delegate call crashed", extra={"session_id": session.session_id})
            self._obs.delegate_call(model_id, "delegate_failed", time.monotonic() - started)
            detail = f"{type(error).__name__} while asking the delegate"
            session.delegate_failed(ask.ask_id, "delegate_failed", self._message(DelegateError("", detail)))
        else:
            result = "tool_calls" if reply.calls else "ok"
            self._obs.delegate_call(model_id, result, time.monotonic() - started)
            if reply.calls:
                self._obs.tool_calls(model_id, len(reply.calls))
            session.delegate_replied(ask.ask_id, reply, time.monotonic())
        self._flush()

    def _message(self, error: DelegateError) -> str:
        code = error.code or "delegate_failed"
        model = "" if self._config is None else self._config.model
        timeout_s = 0.0 if self._config is None else self._config.timeout_s
        return render(code, model=model, timeout_s=timeout_s, detail=error.detail)[1]
