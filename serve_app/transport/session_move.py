"""A session's slot that follows it from replica to replica: the session-move state machine (no Ray here).

The session keeps its history (serve_app/engine/history.py) as frames arrive. When its replica drains
(`moved`) or dies (`lost`), the stream asks its `Placer` for another replica with that history: the new
replica rebuilds the slot (and admits it only if it can also catch up on the input missed meanwhile),
input sent during the move is kept and forwarded once the new slot is attached, and `frames()` goes on
after a gap. A session is never re-opened elsewhere without its state: only when no replica has room, or
the history cannot describe the session, does it end with `SessionLost`.

A session with a persona prompt (PersonaPlex: `set_persona` on a model with a prompt channel) does not
move: its voice prompt entered the model as embeddings, which the token history cannot replay, so its
replica keeps it through a drain and its loss ends it (`SessionLost`, saying why). Scripted speech does
move: the forced text is in the history, and the part of the script not yet spoken is said again on the
new replica (the words in flight at the move may be said twice; the transcript stays exactly the text).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import numpy as np
import numpy.typing as npt

from serve_app.config import NO_PROMPT, ModelTraits
from serve_app.constants import SAMPLE_RATE
from serve_app.engine.history import HistoryLost, SessionHistory
from serve_app.engine.port import EngineFrame, Persona
from serve_app.server.gateway import GatewayError, SessionFellBehind, SessionLost
from serve_app.transport.ingress_channel import ChannelEnded, ChannelSession
from serve_app.transport.ledger import SessionLedger
from serve_app.transport.placement import Placement, Placer
from serve_app.transport.reasons import EndReason

DEFAULT_RESUME_TIMEOUT_S = 2.0
"""How long a session whose replica drained or died may look for another with room before it is lost."""
PERSONA_LOST = (
    "the model replica went away, and a session with a persona prompt cannot continue on another replica "
    "(its voice prompt is not in the history the session keeps)"
)

_Pending = Callable[[ChannelSession], None]


class MoveObserver(Protocol):
    """Told of every session that moved to another replica, or could not (the ingress's metrics)."""

    def session_moved(self, model_id: str, reason: str, gap_s: float) -> None: ...

    def session_move_failed(self, model_id: str, reason: str) -> None: ...


class NoMoveObserver:
    def session_moved(self, model_id: str, reason: str, gap_s: float) -> None:
        pass

    def session_move_failed(self, model_id: str, reason: str) -> None:
        pass


def gateway_error(ended: ChannelEnded) -> GatewayError:
    """What the session's client is told when its slot ended on the replica's side and cannot move."""
    if ended.reason is EndReason.FELL_BEHIND:
        return SessionFellBehind(ended.detail)
    return SessionLost(ended.detail or ended.reason.value)


class MovingSlotStream:
    """One session's slot (the gateway's `SlotStream`), on whichever replica holds it now. Loop-bound."""

    def __init__(
        self,
        placer: Placer,
        session_id: str,
        model_id: str,
        placement: Placement,
        *,
        moves: MoveObserver | None = None,
        ledger: SessionLedger | None = None,
        resume_timeout_s: float = DEFAULT_RESUME_TIMEOUT_S,
        logger: logging.Logger | None = None,
        traits: ModelTraits = NO_PROMPT,
    ) -> None:
        """`logger`: where the moves are logged (the Ray gateway passes Serve's, so they land in the
        ingress replica's log with the session's id). `traits`: the model's, for a persona's defaults
        and whether it takes one."""
        self._placer = placer
        self._session_id = session_id
        self._model_id = model_id
        self._placement = placement
        self._moves: MoveObserver = moves or NoMoveObserver()
        self.ledger = ledger or SessionLedger()
        self._resume_timeout_s = resume_timeout_s
        self._logger = logger or logging.getLogger(__name__)
        self.text_delay_s = placement.text_delay_s
        spec = placement.history
        self._history = SessionHistory(spec) if spec is not None else None
        self._moving = False
        self._backlog: list[_Pending] = []
        """Input (and scripts) sent while the session moves: forwarded to the new replica once attached."""
        self._traits = traits
        self._prompted = False
        """The slot took a persona prompt: the session cannot move."""
        self._script: str | None = None
        self._said = 0
        """Characters of the running script its frames have carried so far."""
        self._moved: tuple[str, float, str] | None = None
        """(why, when the last frame before the move arrived, the old replica) until the first frame
        after it."""
        self._last_frame_at = time.monotonic()
        self._closed = False

    @property
    def placement(self) -> Placement:
        """Where the session is now."""
        return self._placement

    @property
    def _log(self) -> dict[str, str]:
        replica = self._placement.replica_id
        return {"session_id": self._session_id, "model": self._model_id, "replica": replica}

    async def send_audio(self, pcm: npt.NDArray[np.float32]) -> None:
        if self._closed:
            raise SessionLost("the session is closed")
        if self._history is not None:
            self._history.add_input(pcm, time.monotonic())
        if self._moving:
            self._backlog.append(lambda channel: channel.send_audio(pcm))
            return
        try:
            self._placement.channel.send_audio(pcm)
        except ChannelEnded as exc:
            if not self._can_move(exc):
                raise self._error(exc) from exc
            # frames() moves the session; the history holds this audio as not stepped yet

    async def set_persona(self, persona: Persona) -> None:
        if self._closed:
            raise SessionLost("the session is closed")
        chosen = self._traits.persona(persona)
        self._prompted = self._prompted or self._traits.prompt_channel
        self._control(lambda channel: channel.set_persona(chosen))

    async def say(self, text: str) -> None:
        if self._closed:
            raise SessionLost("the session is closed")
        self._script, self._said = text, 0
        self._control(lambda channel: channel.say(text))

    async def stop_saying(self) -> None:
        self._script = None
        if self._moving:
            self._backlog.append(lambda channel: channel.stop_saying())
        elif not self._closed:
            self._placement.channel.stop_saying()

    def _control(self, send: _Pending) -> None:
        if self._moving:
            self._backlog.append(send)
            return
        try:
            send(self._placement.channel)
        except ChannelEnded as exc:
            if not self._can_move(exc):
                raise self._error(exc) from exc

    def _follow_script(self, frame: EngineFrame) -> None:
        if self._script is None or not frame.scripted:
            return
        self._said += len(frame.text or "")
        if frame.script_done:
            self._script = None

    def _can_move(self, ended: ChannelEnded) -> bool:
        return (
            ended.reason in (EndReason.LOST, EndReason.MOVED)
            and self._history is not None
            and not self._prompted
            and not self._closed
        )

    def _error(self, ended: ChannelEnded) -> GatewayError:
        if self._prompted and ended.reason in (EndReason.LOST, EndReason.MOVED) and not self._closed:
            return SessionLost(f"{PERSONA_LOST}: {ended.detail or ended.reason.value}")
        return gateway_error(ended)

    async def frames(self) -> AsyncIterator[EngineFrame]:
        while True:
            replica_id = self._placement.replica_id
            try:
                async for frame in self._placement.channel.frames():
                    now = time.monotonic()
                    if self._history is not None:
                        self._history.add_records(frame.history)
                    self._follow_script(frame)
                    if self._moved is not None:
                        self._moved_done(now)
                    self._last_frame_at = now
                    self.ledger.record(self._session_id, replica_id)
                    yield frame
                return
            except ChannelEnded as exc:
                if not self._can_move(exc):
                    if exc.reason is not EndReason.FELL_BEHIND:
                        self._logger.warning("session lost: %s", exc, extra=self._log)
                    raise self._error(exc) from exc
                await self._move(exc)

    async def _move(self, ended: ChannelEnded) -> None:
        """Continue the session on another replica of the model, rebuilt from its history."""
        assert self._history is not None
        why = "drain" if ended.reason is EndReason.MOVED else "lost"
        ended_on = self._placement.replica_id
        self._logger.info("session moving off replica %s (%s): %s", ended_on, why, ended, extra=self._log)
        self._moving = True
        self._placement.abandon()
        try:
            window = self._history.window(time.monotonic())
            placement = await self._placer.place(
                self._model_id, self._session_id, resume=window, timeout_s=self._resume_timeout_s
            )
        except (HistoryLost, GatewayError) as exc:
            code = exc.code if isinstance(exc, GatewayError) else "history_lost"
            self._moves.session_move_failed(self._model_id, code)
            self._logger.warning("session could not move (%s): %s", code, exc, extra=self._log)
            lost = f"the model replica went away and the session could not continue: {exc}"
            raise SessionLost(lost) from exc
        finally:
            self._moving = False
        if self._closed:  # the session ended while it moved
            await placement.release()
            return
        self._placement = placement
        if self._script is not None:
            # The rest of the script, after what its frames carried (the history replays what was forced).
            placement.channel.say(self._script[self._said :])
            self._script, self._said = self._script[self._said :], 0
        for send in self._backlog:
            send(placement.channel)
        self._backlog.clear()
        self._moved = (why, self._last_frame_at, ended_on)
        self._logger.info(
            "session resumed on replica %s from %.1f s of history (%d steps, %.2f s pending)",
            placement.replica_id,
            window.seconds,
            window.steps,
            window.pending.size / SAMPLE_RATE,
            extra=self._log,
        )

    def _moved_done(self, now: float) -> None:
        assert self._moved is not None
        why, since, old = self._moved
        self._moved = None
        gap = now - since
        self._moves.session_moved(self._model_id, why, gap)
        move = {"reason": why, "from": old, "to": self._placement.replica_id, "gap_s": gap}
        self.ledger.record_move(self._session_id, move)
        self._logger.info("session moved (%s): output gap %.0f ms", why, 1000 * gap, extra=self._log)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._placement.release()
