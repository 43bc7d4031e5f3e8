"""Scripted speech: assistant text a client put in the conversation, said by Moshi in its own voice.

An assistant message item with text content (conversation.item.create) waits for the next response.create,
which then becomes a scripted response (turns.py): the slot is asked to `Say` the text (the engine forces it
into Moshi's text stream, serve_app/engine/forced_text.py) and the frames that carry it
(`EngineFrame.scripted`) feed that response, their text verbatim, until the one marked `script_done`. A
scripted response that ends any other way (cancel, truncate, barge-in, a deadline) asks the slot to
`StopSaying`. Frames the engine forced before it heard that may still be on their way: they are stale until
the first frame that is not scripted (the engine starts every new script after its text lag, so at least
one unscripted frame separates a stopped script from the next), and stay off the wire. Frames carry no
script id, so a stopped script's frame can still pass for the next script's where the stop overtook the
stopped script's start (a cancel before its first frame came back, then at once a new script): each piece
must then also continue the running script's text, and only a frame that ends its text ends it, so the
transcript stays exactly the text (a stray pause frame can still add 80 ms of audio).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from serve_app.engine.port import EngineFrame
from serve_app.session.conversation import ClientItem, Conversation, Item
from serve_app.session.engine_requests import EngineRequest, Say, StopSaying

__all__ = ["Scripts", "script_text"]

_TEXT_PARTS = ("output_text", "text")
"""An assistant message's text content: GA says output_text, beta text."""


def script_text(item: dict[str, Any]) -> str:
    """The text an assistant message item asks Moshi to say (its text parts, joined); "" if none."""
    if item.get("type") != "message" or item.get("role") != "assistant":
        return ""
    parts = item.get("content") or []
    return "".join(
        str(part.get("text") or "")
        for part in parts
        if isinstance(part, dict) and part.get("type") in _TEXT_PARTS
    )


class Scripts:
    def __init__(self, *, conversation: Conversation, ask: Callable[[EngineRequest], None]) -> None:
        self._conversation = conversation
        self._ask = ask
        self._pending: list[ClientItem] = []
        """Assistant text items created since the last response.create, oldest first."""
        self._stale = False
        """A script was stopped: scripted frames are its leftovers until an unscripted frame arrives."""
        self._unsaid = ""
        """What the running script has still to say."""

    def item_added(self, item: Item) -> None:
        if isinstance(item, ClientItem) and script_text(item.wire):
            self._pending.append(item)

    @property
    def pending(self) -> bool:
        """Assistant text waits for the next response.create."""
        return any(item.id in self._conversation for item in self._pending)

    def take(self) -> str | None:
        """The text a response.create is to say: the pending items still in the conversation, joined by a
        space (one item: exactly its text); None when there is nothing to say."""
        texts = [
            script_text(item.wire)
            for item in self._pending
            if item.id in self._conversation and self._conversation.get(item.id) is item
        ]
        self._pending = []
        return " ".join(texts) or None

    def say(self, text: str) -> None:
        self._ask(Say(text))
        self._unsaid = text

    def stop(self) -> None:
        self._ask(StopSaying())
        self._stale = True

    def current(self, frame: EngineFrame) -> bool:
        """Whether `frame` carries the running script (a scripted frame that is not a stopped script's),
        counting what it says."""
        if not frame.scripted:
            self._stale = False
            return False
        if self._stale:
            return False
        text = frame.text or ""
        if not self._unsaid.startswith(text) or (frame.script_done and self._unsaid != text):
            return False
        self._unsaid = self._unsaid[len(text) :]
        return True
