"""Answers from a delegate: a text model that reads the conversation and answers for Moshi, with words
Moshi then says (scripted speech) or with calls of the client's tools (the Realtime function-calling flow).

When it is asked: after each committed user turn once its transcript is in (server VAD with
`create_response`), and at a client's response.create (after a `function_call_output`, or any time: the
delegate answers what the conversation now asks). An ask made at a response.create has its response open
from the start (`delegated`: it owns the turn while it waits); a user turn's ask opens one only when its
answer comes, at a pause in Moshi's own speech (duplex) or, after `floor_wait_ms`, by ending Moshi's
response. The newest user turn wins: an answer to an older turn, or one that comes while the user speaks
again, is dropped.

The core does no I/O: asks queue here (`take_asks`), the shell's delegate pump (serve_app/server/
delegate_pump.py) calls the delegate off the audio path and reports back `replied` or `failed`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from serve_app.delegate.config import DelegateConfig
from serve_app.delegate.messages import DelegateReply
from serve_app.protocol.dialect import Dialect
from serve_app.protocol.ids import new_item_id
from serve_app.protocol.json_object import JsonObject
from serve_app.session.config import SessionConfig
from serve_app.session.conversation import Conversation
from serve_app.session.response import Response
from serve_app.session.turns import Turns

__all__ = ["DelegateAsk", "Delegation"]

logger = logging.getLogger(__name__)

Trigger = Literal["user_turn", "response_create"]


@dataclass(frozen=True, slots=True)
class DelegateAsk:
    """One question for the delegate: the session's instructions, tools and conversation as they are now."""

    ask_id: int
    trigger: Trigger
    instructions: str
    items: tuple[JsonObject, ...]
    """The conversation's items on the wire (the session's dialect), oldest first."""
    tools: tuple[JsonObject, ...]
    tool_choice: str | JsonObject


@dataclass(slots=True)
class _Answer:
    """A user turn's answer waiting for the floor."""

    reply: DelegateReply
    since_s: float | None = None


class Delegation:
    def __init__(
        self,
        *,
        delegate: DelegateConfig | None,
        dialect: Dialect,
        conversation: Conversation,
        turns: Turns,
        config: Callable[[], SessionConfig],
        report: Callable[[str, str], None],
        log: dict[str, str],
    ) -> None:
        self._delegate = delegate
        self._dialect = dialect
        self._conversation = conversation
        self._turns = turns
        self._config = config
        self._report = report
        """Tell the client a server-side error it survives: (code, message)."""
        self._log = log
        self._ids = itertools.count(1)
        self._asks: list[DelegateAsk] = []
        self._waiting: tuple[int, Response | None] | None = None
        """The ask in flight: its id and the response it answers (None: a user turn's, not open yet)."""
        self._answer: _Answer | None = None

    @property
    def enabled(self) -> bool:
        return self._delegate is not None

    def take_asks(self) -> list[DelegateAsk]:
        asks, self._asks = self._asks, []
        return asks

    # When it is asked -----------------------------------------------------------------------------------

    def user_turn_transcribed(self) -> None:
        """A committed user turn's transcript is in: ask, when server VAD is to create responses."""
        detection = self._config().turn_detection
        if not self.enabled or detection is None or not detection.create_response:
            return
        if self._waiting is not None and self._waiting[1] is not None:
            return  # a response is waiting for the delegate already; it reads the conversation as it is then
        self._answer = None  # an older turn's answer is moot now
        self._ask("user_turn", None)

    def on_response_create(self, params: BaseModel | None) -> None:
        """A client's response.create (no assistant text pending): a response waiting for the delegate."""
        self._turns.yield_floor()  # Moshi's own utterance gives way to what the client asked for
        response = self._turns.open_delegated(params)
        self._answer = None
        self._ask("response_create", response)

    def user_speaking(self) -> None:
        """The user started a new turn: an answer that has not started is dropped (it answers the past)."""
        if self._answer is not None:
            logger.info("delegate answer dropped: the user speaks again", extra=self._log)
            self._answer = None

    def _ask(self, trigger: Trigger, response: Response | None) -> None:
        config = self._config()
        ask = DelegateAsk(
            ask_id=next(self._ids),
            trigger=trigger,
            instructions=config.instructions,
            items=tuple(self._conversation.wire_items(self._dialect)),
            tools=tuple(config.tools),
            tool_choice=config.tool_choice,
        )
        self._waiting = (ask.ask_id, response)
        self._asks.append(ask)
        logger.info("delegate asked", extra={**self._log, "ask_id": ask.ask_id, "trigger": trigger})

    # What comes back ------------------------------------------------------------------------------------

    def replied(self, ask_id: int, reply: DelegateReply, now_s: float) -> None:
        response = self._take(ask_id)
        if response is False:
            return
        if response is None:
            self._answer = _Answer(reply, since_s=now_s)
            self.on_clock(now_s)
            return
        self._deliver(response, reply)

    def failed(self, ask_id: int, code: str, message: str) -> None:
        """The delegate gave no answer: the client is told (`code`), a response waiting for it ends
        failed, and the session goes on (its audio never waited for this)."""
        response = self._take(ask_id)
        if response is False:
            return
        logger.info("delegate failed: %s", code, extra={**self._log, "ask_id": ask_id, "code": code})
        self._report(code, message)
        if response is not None:
            self._turns.fail_delegated(response, {"type": "server_error", "code": code})

    def on_clock(self, now_s: float) -> None:
        """Each clock tick and engine frame: a waiting answer starts once the floor is free, or takes it
        from Moshi after `floor_wait_ms`."""
        answer = self._answer
        if answer is None or self._delegate is None:
            return
        if answer.since_s is None:
            answer.since_s = now_s
        free = self._turns.active is None
        if not free and (now_s - answer.since_s) * 1000 >= self._delegate.floor_wait_ms:
            free = self._turns.yield_floor()
        if free:
            self._answer = None
            self._deliver(self._turns.open_delegated(None), answer.reply)

    def _take(self, ask_id: int) -> Response | Literal[False] | None:
        """The response an answer is for (None: a user turn's); False when the ask was superseded."""
        waiting = self._waiting
        if waiting is None or waiting[0] != ask_id:
            logger.info("delegate answer dropped: superseded", extra={**self._log, "ask_id": ask_id})
            return False
        self._waiting = None
        response = waiting[1]
        if response is not None and (response is not self._turns.active or not response.delegated):
            return False  # cancelled meanwhile (its response.done is sent)
        return response

    def _deliver(self, response: Response, reply: DelegateReply) -> None:
        if reply.calls:
            calls = [self._call_item(call.call_id, call.name, call.arguments) for call in reply.calls]
            self._turns.call_functions(response, calls)
        elif reply.text.strip():
            self._turns.speak(response, reply.text.strip())
        else:
            self._turns.call_functions(response, [])  # nothing to say: the response ends empty

    @staticmethod
    def _call_item(call_id: str, name: str, arguments: str) -> JsonObject:
        return {
            "id": new_item_id(),
            "object": "realtime.item",
            "type": "function_call",
            "status": "completed",
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
        }
