"""One runner slot seen from asyncio: the runner thread hands frames and slot errors to the loop.

Used where a session and its slot live in one process (the in-process gateway, the engine-only
benchmark). Raises engine errors (`SlotEnded` and subclasses); each gateway maps them onto its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np
import numpy.typing as npt

from serve_app.engine.errors import SlotClosed, SlotEnded
from serve_app.engine.port import EngineFrame, Persona
from serve_app.engine.runner import ClockedRunner

_END = object()


class AsyncSlot:
    """A slot of a ClockedRunner for one asyncio session: `send_audio`, `frames()`, `close()`, and the
    slot's persona and scripted speech (`set_persona`, `say`, `stop_saying`)."""

    def __init__(self, runner: ClockedRunner, loop: asyncio.AbstractEventLoop, check_budget: bool) -> None:
        self._runner = runner
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._closed = False
        # open_slot raises NoFreeSlot; nothing to undo then.
        self.slot = runner.open_slot(self._on_frame, on_error=self._on_error, check_budget=check_budget)

    @classmethod
    def open(cls, runner: ClockedRunner, *, check_budget: bool = False) -> AsyncSlot:
        return cls(runner, asyncio.get_running_loop(), check_budget)

    def _hand_over(self, item: object) -> None:
        # RuntimeError: the loop is gone, the session already ended.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _on_frame(self, frame: EngineFrame) -> None:
        self._hand_over(frame)

    def _on_error(self, error: BaseException) -> None:
        self._hand_over(error)

    async def send_audio(self, pcm: npt.NDArray[np.float32]) -> None:
        if self._closed:
            raise SlotClosed("the session's slot is closed")
        self._runner.push(self.slot, pcm)

    async def set_persona(self, persona: Persona) -> None:
        """Before the first audio: the runner prefills the persona's prompt (no-op: no prompt channel)."""
        if self._closed:
            raise SlotClosed("the session's slot is closed")
        self._runner.set_persona(self.slot, persona)

    async def say(self, text: str) -> None:
        if self._closed:
            raise SlotClosed("the session's slot is closed")
        self._runner.say(self.slot, text)

    async def stop_saying(self) -> None:
        if not self._closed:
            self._runner.stop_saying(self.slot)

    async def frames(self) -> AsyncIterator[EngineFrame]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, SlotEnded):
                raise item
            if isinstance(item, BaseException):
                raise SlotEnded(str(item)) from item
            assert isinstance(item, EngineFrame)
            yield item

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._runner.close_slot(self.slot)
        self._queue.put_nowait(_END)
