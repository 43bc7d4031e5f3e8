"""The clock of a model replica: a plain thread ticking the batched engine every 80 ms while a slot is open.

The model step never runs on an asyncio loop; callbacks are invoked from this thread and must hand off fast.
The clock also keeps the replica honest about real time: it catches up on input that is overdue (after a
stall) while ticks leave room, refuses sessions its recent ticks cannot fit (`TickBudget`), and ends a
session whose input has waited past the lag limit instead of answering it seconds late. A resumed
session's slot is rebuilt in chunks between ticks, in the time the ticks leave (serve_app/engine/rebuild.py),
and so is a persona prompt (serve_app/engine/prompt.py), whose plan is built on the clock thread too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from serve_app.constants import FRAME_S
from serve_app.engine.batch import BatchedEngine
from serve_app.engine.capacity import MAX_ADMIT_LAG_S, CapacityReport, TickBudget
from serve_app.engine.errors import FellBehind, RebuildFailed, TickBudgetFull, TickFailed
from serve_app.engine.history import HistorySpec, ResumeWindow
from serve_app.engine.lag_limit import DEFAULT_MAX_LAG_S, LagLimit
from serve_app.engine.persona_prompts import PersonaPrompts
from serve_app.engine.port import EngineFrame, Persona
from serve_app.engine.prompt_queue import PromptQueue
from serve_app.engine.tick_stats import (
    ErrorCallback,
    FrameCallback,
    OutputListener,
    RebuiltCallback,
    RunnerStats,
    TickListener,
    TickOutput,
    TickStats,
)

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

CATCH_UP_FRACTION = 0.6
"""Overdue input is caught up with back-to-back ticks only while a tick takes less than this share of
the period, so catching up never starves the schedule it is catching up with."""
REBUILD_MARGIN_S = 0.005
"""A rebuild chunk starts only if, by the last chunk's duration, it ends this long before the next tick."""
REBUILD_STARVE_S = 0.5
"""With no room for this long (the ticks fill the period, or catch-up), a chunk runs anyway: a rebuild
always progresses, at the cost of one late tick per this interval."""


@dataclass(frozen=True, slots=True)
class _Registration:
    on_frame: FrameCallback | None
    on_error: ErrorCallback | None
    on_rebuilt: RebuiltCallback | None = None
    tag: int = 0


def _call(callback: Callable[[_T], None] | None, arg: _T, failed: str, *args: object) -> None:
    """Run a callback on the clock thread: one that raises is logged (`failed` % `args`), never stops it."""
    if callback is None:
        return
    try:
        callback(arg)
    except Exception:
        logger.exception(failed, *args)


class ClockedRunner:
    """Owns the engine's clock. `open_slot`/`push`/`close_slot` may be called from any thread."""

    def __init__(
        self,
        engine: BatchedEngine,
        *,
        period_s: float = FRAME_S,
        on_tick: TickListener | None = None,
        history: int = 1000,
        max_lag_s: float | None = DEFAULT_MAX_LAG_S,
        budget: TickBudget | None = None,
        prompts: PersonaPrompts | None = None,
    ) -> None:
        """`prompts`: the model's persona prompts (PersonaPlex), None for a model without a prompt channel."""
        self._engine = engine
        self._prompts = prompts
        self._prompt_queue = PromptQueue(engine, prompts) if prompts is not None else None
        self._period = period_s
        self._tick_listeners: list[TickListener] = [on_tick] if on_tick else []
        self._output_listeners: list[OutputListener] = []
        self._lag_limit = LagLimit(max_lag_s, period_s=period_s) if max_lag_s is not None else None
        self.budget = budget or TickBudget(engine.slots_total, period_s=period_s)
        # Guards the registrations; held while dispatching so no callback runs after close_slot returns
        # (reentrant: a callback may close its own slot).
        self._lock = threading.RLock()
        self._registrations: dict[int, _Registration] = {}
        self._failed: set[int] = set()
        """Slots whose session was told of a failed tick; held until their owner closes them, so a late
        push from the old session can never reach a new session on the same slot."""
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._durations: deque[float] = deque(maxlen=history)
        self._ticks = 0
        self._late = 0
        self._errors = 0
        self._chunk_s = 0.0
        """How long the last rebuild chunk took (s): the next one waits for that much room."""
        self._last_chunk_at = float("-inf")

    # --- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("runner already started")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="engine-clock", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the clock (open slots stay open; their sessions simply get no more frames)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def native_thread_id(self) -> int | None:
        """The OS id of the clock thread (its CPU time is the engine's; benchmarks read it)."""
        return self._thread.native_id if self._thread is not None else None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def ready(self) -> bool:
        """Warmed up and clocking: the replica may take sessions."""
        return self._engine.ready and self.running

    # --- slots ---------------------------------------------------------------------------------------------

    @property
    def history_spec(self) -> HistorySpec | None:
        """What a session must keep to have its slot rebuilt elsewhere (None: it cannot be)."""
        return self._engine.history_spec

    @property
    def text_delay_s(self) -> float:
        """How far a text-only model's text trails its input (0 for Moshi)."""
        return self._engine.text_delay_s

    @property
    def voices(self) -> tuple[str, ...]:
        """The voice prompts a persona may name (empty: the model has no prompt channel)."""
        return self._prompts.voices if self._prompts is not None else ()

    def prompt_cache_stats(self) -> dict[str, int]:
        """The persona prompt cache's counters (entries, bytes, budget_bytes, hits, misses, evictions)."""
        return self._engine.prompt_cache.stats()

    @property
    def slots_total(self) -> int:
        return self._engine.slots_total

    @property
    def slots_used(self) -> int:
        return self._engine.slots_used

    def add_tick_listener(self, listener: TickListener) -> None:
        """Called on the runner thread after each tick's frame callbacks (add before sessions start)."""
        self._tick_listeners.append(listener)

    def add_output_listener(self, listener: OutputListener) -> None:
        """Called on the runner thread once per tick that stepped a slot opened with a `tag`, with all such
        slots' frames: one hand-off per tick for an owner of many slots (add before sessions start)."""
        self._output_listeners.append(listener)

    def capacity(self) -> CapacityReport:
        lag = max(self._engine.lateness().values(), default=0.0)
        return self.budget.report(self.slots_used, lag_s=max(0.0, lag))

    def open_slot(
        self,
        on_frame: FrameCallback | None,
        on_error: ErrorCallback | None = None,
        *,
        tag: int | None = None,
        check_budget: bool = False,
        resume: ResumeWindow | None = None,
        on_rebuilt: RebuiltCallback | None = None,
    ) -> int:
        """Take a free slot (raises NoFreeSlot; with `check_budget`, TickBudgetFull when recent ticks
        leave no room for one more session). Callbacks run on the runner thread; `on_error` is told when
        the slot's session cannot go on (`TickFailed`, `FellBehind`, `RebuildFailed`), after which its
        owner closes it. With `resume`, the slot is rebuilt from the window first; `on_rebuilt` is told
        when it is, and the window's pending input (as late as it is old) is stepped from then on.
        Each frame goes to `on_frame`, or, given `tag` instead, into the tick's `TickOutput`."""
        if (on_frame is None) == (tag is None):
            raise ValueError("open a slot with either on_frame or a tag")
        if check_budget:
            report = self.capacity()
            if not report.admitting and report.slots_used < report.slots_total:
                behind = report.lag_s > MAX_ADMIT_LAG_S
                raise TickBudgetFull(
                    f"recent ticks take {1000 * report.tick_p90_s:.1f} ms (p90) of a "
                    f"{1000 * self.budget.budget_s:.0f} ms budget with {report.slots_used} sessions"
                    + (f", input {1000 * report.lag_s:.0f} ms behind" if behind else "")
                )
        held = self.slots_used
        slot = self._engine.open_slot(resume)
        self.budget.admitted(held)
        with self._lock:
            self._registrations[slot] = _Registration(on_frame, on_error, on_rebuilt, tag or 0)
        if resume is not None and resume.pending.size:
            self._engine.push(slot, resume.pending, time.monotonic() - resume.pending_age_s)
        self._wake.set()
        return slot

    def push(self, slot: int, pcm: npt.NDArray[np.float32], now: float | None = None) -> None:
        with self._lock:
            if slot in self._failed:
                return  # the session already got on_error; its audio goes nowhere
            queue = self._prompt_queue
            if queue is not None and queue.hold(slot, pcm, time.monotonic() if now is None else now):
                return  # the slot must not step before its prompt is in place
        self._engine.push(slot, pcm, now)

    # --- personas and scripted speech ----------------------------------------------------------------------

    def set_persona(self, slot: int, persona: Persona) -> bool:
        """Prefill the slot's persona prompt before its first step; False (nothing done) on a model without
        a prompt channel. The plan is built and its prefill started on the clock thread, before its next
        tick; the prefill runs in chunks between ticks, as a rebuild does. Input pushed meanwhile waits
        (never late while it does) and steps after the prompt. A persona that cannot be prompted (unknown
        voice, a slot that already stepped) ends the session (`RebuildFailed` to `on_error`)."""
        if self._prompt_queue is None:
            return False
        with self._lock:
            if slot not in self._registrations or slot in self._failed:
                return False
            self._prompt_queue.ask(slot, persona)
        self._wake.set()
        return True

    def say(self, slot: int, text: str) -> None:
        """Scripted speech: force `text` into the slot's text stream from its next step (replacing a running
        script); its frames are `scripted`, the last `script_done` (serve_app/engine/forced_text.py)."""
        if self._engine.text_only:
            return  # a text-only model's text is a transcript; it speaks nothing
        with self._lock:
            if slot in self._registrations:
                self._engine.scripts.start(slot, text)

    def stop_saying(self, slot: int) -> None:
        """Cancel the slot's running script (no-op when none): no further frame of it is `scripted`."""
        self._engine.scripts.cancel(slot)

    def _start_prompts(self) -> None:
        """Clock thread, before a tick (serve_app/engine/prompt_queue.py). The lock is held throughout
        (plans take a few ms of CPU), so a slot closed (or reopened) meanwhile never gets another session's
        prompt."""
        if self._prompt_queue is None:
            return
        with self._lock:
            self._prompt_queue.start(self._registrations.__contains__, self._end_slot)

    def close_slot(self, slot: int) -> None:
        """Free the slot (idempotent); no callback for it runs after this returns."""
        with self._lock:
            self._registrations.pop(slot, None)
            self._failed.discard(slot)
            if self._prompt_queue is not None:
                self._prompt_queue.forget(slot)
            self._engine.close_slot(slot)

    def stats(self) -> RunnerStats:
        with self._lock:
            durations = tuple(self._durations)
            ticks, late, errors = self._ticks, self._late, self._errors
        p50, p99 = (float(v) for v in np.percentile(durations, [50, 99])) if durations else (0.0, 0.0)
        return RunnerStats(
            ticks=ticks,
            late_ticks=late,
            errors=errors,
            recent_durations_s=durations,
            p50_s=p50,
            p99_s=p99,
            slots_used=self.slots_used,
            slots_total=self.slots_total,
            period_s=self._period,
        )

    # --- the clock -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            deadline: float | None = None
            while not self._stopping.is_set():
                if not self._wait_for_slots():
                    deadline = None  # idle: the next session starts a fresh schedule
                    self.budget.reset()  # and the contention measured before is not today's
                    continue
                now = time.monotonic()
                deadline = now if deadline is None else deadline
                if deadline > now and self._stopping.wait(deadline - now):
                    break
                self._start_prompts()
                duration = self._tick_once()
                # Behind schedule: at most one immediate catch-up tick, never a burst.
                deadline = max(deadline + self._period, time.monotonic() - self._period)
                if duration < CATCH_UP_FRACTION * self._period and self._overdue():
                    # A stall left input waiting: step it now, while there is room.
                    deadline = time.monotonic()
                self._rebuild_until(deadline)
        except BaseException:  # the loop itself must never die silently
            logger.exception("engine clock crashed")
            raise

    def _rebuild_until(self, deadline: float) -> None:
        """Rebuild chunks in the time left before the next tick, so live slots keep real time (a chunk is
        a few ms even for a full-size model on a GPU); at least one per `REBUILD_STARVE_S`."""
        while self._engine.rebuilding and not self._stopping.is_set():
            now = time.monotonic()
            starving = now - self._last_chunk_at > REBUILD_STARVE_S
            if now + self._chunk_s + REBUILD_MARGIN_S > deadline and not starving:
                return
            self._last_chunk_at = now
            started = time.perf_counter()
            try:
                job = self._engine.rebuild_step()
            except RebuildFailed as exc:
                self._end_slot(exc.slot, exc)
                continue
            finally:
                took = time.perf_counter() - started
                # A smoothed estimate: one slow chunk (the first allocates the scratch state) must not
                # hold the rest back for a whole starvation interval each.
                self._chunk_s = took if self._chunk_s == 0.0 else 0.7 * self._chunk_s + 0.3 * took
            if job is not None:
                with self._lock:
                    registration = self._registrations.get(job.slot)
                if registration is not None:
                    _call(registration.on_rebuilt, job, "on_rebuilt callback of slot %d failed", job.slot)

    def _end_slot(self, slot: int, error: BaseException) -> None:
        """Tell one slot's session it cannot go on; its owner closes the slot."""
        with self._lock:
            registration = self._registrations.pop(slot, None)
            if registration is None:
                return
            self._failed.add(slot)
        _call(registration.on_error, error, "on_error callback of slot %d failed", slot)

    def _wait_for_slots(self) -> bool:
        """True when a slot is open; otherwise block (no polling) until one opens or stop."""
        with self._lock:
            if self._registrations:
                return True
        if self._engine.rebuilding:  # a cancelled rebuild's scratch state still to drop
            self._rebuild_until(time.monotonic())
        self._wake.wait()
        self._wake.clear()
        return False

    def _overdue(self) -> bool:
        """Some session's oldest frame is more than a period past due: it is queued behind a stall."""
        return any(lag > self._period for lag in self._engine.lateness().values())

    def _tick_once(self) -> float:
        with self._lock:
            snapshot = dict(self._registrations)
        started = time.perf_counter()
        try:
            frames = self._engine.tick()
        except Exception as exc:
            self._fail(snapshot, exc)
            return 0.0
        duration = time.perf_counter() - started
        stats = TickStats(
            duration_s=duration,
            active_slots=len(snapshot),
            stepped_slots=len(frames),
            late=duration > self._period,
        )
        if stats.counts:
            self.budget.record(duration, len(snapshot))
        tagged: list[tuple[int, EngineFrame]] = []
        with self._lock:
            if stats.counts:
                self._ticks += 1
                self._late += stats.late
                self._durations.append(duration)
            for slot, frame in frames.items():
                registration = self._registrations.get(slot)
                if registration is None or registration is not snapshot.get(slot):
                    continue  # closed (or closed and reopened) while the tick ran
                if registration.on_frame is None:
                    tagged.append((registration.tag, frame))
                    continue
                _call(registration.on_frame, frame, "on_frame callback of slot %d failed", slot)
        if tagged:
            output = TickOutput(stats, tagged)
            for output_listener in self._output_listeners:
                _call(output_listener, output, "output listener failed")
        for listener in self._tick_listeners:
            _call(listener, stats, "tick listener failed")
        self._shed_if_behind()
        return duration

    def _shed_if_behind(self) -> None:
        """End the session past its lag limit and not catching up (serve_app/engine/lag_limit.py): it
        cannot be served in real time any more, and ending it gives the others their time back."""
        if self._lag_limit is None:
            return
        now = time.monotonic()
        shed = self._lag_limit.to_end(self._engine.lateness(now), now)
        if shed is None:
            return
        slot, lag = shed
        logger.warning("slot %d is %.0f ms behind real time: ending its session", slot, 1000 * lag)
        self._end_slot(slot, FellBehind(lag, self._lag_limit.max_lag_s))

    def _fail(self, snapshot: dict[int, _Registration], exc: Exception) -> None:
        """A failed tick may have left any row half-stepped: end every session (each owner is told and then
        closes its slot), keep serving new ones (a slot's rows are reset when its next session starts)."""
        logger.exception("engine tick failed; ending %d sessions", len(snapshot))
        with self._lock:
            self._errors += 1
            failed, self._registrations = self._registrations, {}
            error = TickFailed(f"model step failed: {exc}")
            error.__cause__ = exc
            self._failed.update(failed)
            for slot, registration in failed.items():
                _call(registration.on_error, error, "on_error callback of slot %d failed", slot)
