"""Prometheus metrics of the service, tagged by model type (exported by Ray as `ray_moshi_realtime_*`).

Serve adds the `deployment`, `replica` and `application` tags itself. Metric objects are created inside
the replica that records them (they do not pickle).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ray.serve.metrics import Counter, Gauge, Histogram

from serve_app.protocol.errors import ERRORS

if TYPE_CHECKING:
    from serve_app.engine.capacity import CapacityReport
    from serve_app.engine.tick_stats import TickStats

PREFIX = "moshi_realtime_"
MODEL_TAG = "model"
CODE_TAG = "code"

# 80 ms is the real-time budget of one tick; the buckets resolve around it.
TICK_BUCKETS_S = [0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.1, 0.15, 0.2, 0.4, 0.8, 1.6]
FIRST_AUDIO_BUCKETS_S = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0]
MOVE_BUCKETS_S = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0]
# A chat model answers in ~0.3-3 s; a call is cut at its timeout (10 s by default, at most 120).
DELEGATE_BUCKETS_S = [0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0]
REASON_TAG = "reason"
RESULT_TAG = "result"
DELEGATE_RESULTS = ("ok", "tool_calls", *(code for code in ERRORS if code.startswith("delegate_")))
"""How a delegate call ends: a text reply, function calls, or the error code the session got."""


def _start_at_zero(counter: Counter, tags: dict[str, str] | None = None) -> None:
    """Export a counter before its first event, so dashboards and alerts see 0 rather than no series.

    `Counter.inc` refuses 0; recording the point directly is what it does underneath.
    """
    counter._record(0, tags=tags)


class ModelMetrics:
    """Per model replica: sessions, slots and the clocked loop's health."""

    def __init__(self, model_id: str) -> None:
        self.active_sessions = Gauge(
            PREFIX + "active_sessions", "Sessions holding a slot on this replica.", tag_keys=(MODEL_TAG,)
        )
        self.slots_used = Gauge(PREFIX + "slots_used", "Batch slots in use.", tag_keys=(MODEL_TAG,))
        self.slots_total = Gauge(PREFIX + "slots_total", "Batch slots of the replica.", tag_keys=(MODEL_TAG,))
        self.tick_duration = Histogram(
            PREFIX + "tick_duration_seconds",
            "Wall time of one engine tick (budget: 0.08 s).",
            boundaries=TICK_BUCKETS_S,
            tag_keys=(MODEL_TAG,),
        )
        self.late_ticks = Counter(
            PREFIX + "late_ticks", "Ticks that started after their 80 ms deadline.", tag_keys=(MODEL_TAG,)
        )
        self.missed_frames = Counter(
            PREFIX + "missed_frames",
            "Slot-ticks where an active session had no input frame and was paused.",
            tag_keys=(MODEL_TAG,),
        )
        self.sessions_served = Counter(
            PREFIX + "replica_sessions", "Sessions admitted by this replica.", tag_keys=(MODEL_TAG,)
        )
        self.admissions_refused = Counter(
            PREFIX + "replica_admissions_refused",
            "Sessions routed here that found no free slot.",
            tag_keys=(MODEL_TAG,),
        )
        self.capacity = Gauge(
            PREFIX + "capacity_sessions",
            "Sessions this replica expects to hold in real time, judged from its recent ticks.",
            tag_keys=(MODEL_TAG,),
        )
        self.admitting = Gauge(
            PREFIX + "admitting",
            "1 while the replica takes new sessions, 0 when full.",
            tag_keys=(MODEL_TAG,),
        )
        self.sessions_resumed = Counter(
            PREFIX + "replica_sessions_resumed",
            "Sessions admitted here to continue from another replica (slot rebuilt from their history).",
            tag_keys=(MODEL_TAG,),
        )
        self.sessions_moved = Counter(
            PREFIX + "replica_sessions_moved",
            "Sessions this replica told to move on because it was draining.",
            tag_keys=(MODEL_TAG,),
        )
        by_result: Any = (MODEL_TAG, "result")  # Ray's stub types tag_keys as a 1-tuple
        self.prompt_cache_lookups = Counter(
            PREFIX + "prompt_cache_lookups",
            "Persona prompts looked up in the replica's prompt-state cache, by result (hit: copied, miss: "
            "prefilled).",
            tag_keys=by_result,
        )
        self.prompt_cache_bytes = Gauge(
            PREFIX + "prompt_cache_bytes", "Bytes held by the persona prompt cache.", tag_keys=(MODEL_TAG,)
        )
        self._prompt_lookups = {"hit": 0, "miss": 0}
        self.rebuild_seconds = Histogram(
            PREFIX + "slot_rebuild_seconds",
            "From a resumed session's admission to its slot being rebuilt (prefill between ticks).",
            boundaries=MOVE_BUCKETS_S,
            tag_keys=(MODEL_TAG,),
        )
        for metric in (
            self.capacity,
            self.admitting,
            self.active_sessions,
            self.slots_used,
            self.slots_total,
            self.tick_duration,
            self.late_ticks,
            self.missed_frames,
            self.sessions_served,
            self.admissions_refused,
            self.sessions_resumed,
            self.sessions_moved,
            self.rebuild_seconds,
            self.prompt_cache_lookups,
            self.prompt_cache_bytes,
        ):
            metric.set_default_tags({MODEL_TAG: model_id})  # Serve adds its tags into the dict it gets
        for counter in (self.late_ticks, self.missed_frames, self.sessions_resumed, self.sessions_moved):
            _start_at_zero(counter)
        for result in self._prompt_lookups:
            self.prompt_cache_lookups._record(0, tags={"result": result})

    def record_ticks(self, ticks: Iterable[TickStats]) -> None:
        late = missed = 0
        for tick in ticks:
            if tick.counts:
                self.tick_duration.observe(tick.duration_s)
                late += int(tick.late)
            missed += tick.active_slots - tick.stepped_slots
        if late:
            self.late_ticks.inc(late)
        if missed:
            self.missed_frames.inc(missed)

    def record_capacity(self, report: CapacityReport) -> None:
        self.capacity.set(report.capacity)
        self.admitting.set(int(report.admitting))

    def record_prompt_cache(self, stats: Mapping[str, int]) -> None:
        """The cache's cumulative counters, as increments since the last call."""
        self.prompt_cache_bytes.set(stats["bytes"])
        for result, key in (("hit", "hits"), ("miss", "misses")):
            new = stats[key] - self._prompt_lookups[result]
            if new > 0:
                self.prompt_cache_lookups.inc(new, tags={"result": result})
            self._prompt_lookups[result] = stats[key]

    def record_slots(self, used: int, total: int, sessions: int) -> None:
        self.slots_used.set(used)
        self.slots_total.set(total)
        self.active_sessions.set(sessions)


class IngressMetrics:
    """Per ingress replica: the SessionObserver the WebSocket app reports to."""

    def __init__(self, model_ids: Iterable[str]) -> None:
        # Clients choose the model id they ask for: unknown ones share one label, or a scan of
        # made-up ids would grow a series per id.
        self._known = frozenset(model_ids)
        keys = (MODEL_TAG,)
        self.sessions = Gauge(
            PREFIX + "sessions", "Open realtime sessions (sockets past admission).", tag_keys=keys
        )
        self.sessions_started = Counter(PREFIX + "sessions_started", "Sessions admitted.", tag_keys=keys)
        # Ray annotates tag_keys as a 1-tuple; any tuple of names works.
        by_code: Any = (MODEL_TAG, CODE_TAG)
        self.sessions_rejected = Counter(
            PREFIX + "sessions_rejected", "Sessions refused at admission, by error code.", tag_keys=by_code
        )
        self.errors = Counter(PREFIX + "errors", "`error` events sent to clients, by code.", tag_keys=by_code)
        self.time_to_first_audio = Histogram(
            PREFIX + "time_to_first_audio_seconds",
            "From a session's first input audio to its first output audio delta.",
            boundaries=FIRST_AUDIO_BUCKETS_S,
            tag_keys=keys,
        )
        by_reason: Any = (MODEL_TAG, REASON_TAG)
        self.session_moves = Counter(
            PREFIX + "session_moves",
            "Sessions continued on another replica, by why (`drain`: their replica stopped, `lost`: died).",
            tag_keys=by_reason,
        )
        self.session_move_failures = Counter(
            PREFIX + "session_move_failures",
            "Sessions that could not continue elsewhere (they got `session_lost`), by why.",
            tag_keys=by_reason,
        )
        self.session_move_gap = Histogram(
            PREFIX + "session_move_gap_seconds",
            "A moved session's output gap: its last frame from the old replica to its first from the new.",
            boundaries=MOVE_BUCKETS_S,
            tag_keys=keys,
        )
        by_result: Any = (MODEL_TAG, RESULT_TAG)
        self.delegate_calls = Counter(
            PREFIX + "delegate_calls",
            "Delegate (chat model) calls, by result: ok (a text reply), tool_calls, or the error code sent.",
            tag_keys=by_result,
        )
        self.delegate_latency = Histogram(
            PREFIX + "delegate_latency_seconds",
            "Wall time of one delegate call, whatever its result.",
            boundaries=DELEGATE_BUCKETS_S,
            tag_keys=keys,
        )
        self.tool_calls_made = Counter(
            PREFIX + "tool_calls", "Function calls the delegate's replies asked for.", tag_keys=keys
        )
        for model_id in self._known:
            _start_at_zero(self.tool_calls_made, {MODEL_TAG: model_id})
            for result in DELEGATE_RESULTS:
                _start_at_zero(self.delegate_calls, {MODEL_TAG: model_id, RESULT_TAG: result})
        self._open: dict[str, int] = {}

    def session_moved(self, model_id: str, reason: str, gap_s: float) -> None:
        self.session_moves.inc(tags={MODEL_TAG: model_id, REASON_TAG: reason})
        self.session_move_gap.observe(gap_s, tags={MODEL_TAG: model_id})

    def session_move_failed(self, model_id: str, reason: str) -> None:
        self.session_move_failures.inc(tags={MODEL_TAG: model_id, REASON_TAG: reason})

    def session_started(self, model_id: str) -> None:
        self._open[model_id] = self._open.get(model_id, 0) + 1
        self.sessions.set(self._open[model_id], tags={MODEL_TAG: model_id})
        self.sessions_started.inc(tags={MODEL_TAG: model_id})

    def session_ended(self, model_id: str) -> None:
        self._open[model_id] = max(0, self._open.get(model_id, 0) - 1)
        self.sessions.set(self._open[model_id], tags={MODEL_TAG: model_id})

    def _label(self, model_id: str) -> str:
        return model_id if model_id in self._known else "unknown"

    def session_rejected(self, model_id: str, code: str) -> None:
        self.sessions_rejected.inc(tags={MODEL_TAG: self._label(model_id), CODE_TAG: code})

    def error_sent(self, model_id: str, code: str) -> None:
        self.errors.inc(tags={MODEL_TAG: self._label(model_id), CODE_TAG: code})

    def first_audio(self, model_id: str, seconds: float) -> None:
        self.time_to_first_audio.observe(seconds, tags={MODEL_TAG: model_id})

    def delegate_call(self, model_id: str, result: str, seconds: float) -> None:
        # Results are a fixed set (one series each); anything else would be a bug, counted as a failure.
        outcome = result if result in DELEGATE_RESULTS else "delegate_failed"
        self.delegate_calls.inc(tags={MODEL_TAG: self._label(model_id), RESULT_TAG: outcome})
        self.delegate_latency.observe(seconds, tags={MODEL_TAG: self._label(model_id)})

    def tool_calls(self, model_id: str, count: int) -> None:
        if count > 0:
            self.tool_calls_made.inc(count, tags={MODEL_TAG: self._label(model_id)})
