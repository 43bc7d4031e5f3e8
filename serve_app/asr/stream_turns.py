"""A streaming recogniser's text cut into the session's user turns (sans-I/O).

Kyutai STT turns one 80 ms input frame into at most one text piece, `text_delay_ms` late: the piece that
comes out after frame k is about the audio that ended `text_delay_ms` before frame k's end. `StreamTurns`
keeps the map from the stream's audio to the session's input timeline (silence pushed to flush a turn
has no place on that timeline), gives each piece to the user turn whose audio it is about — the turn
still being spoken (its item id is known from speech_started) or a committed one — and says when a
committed turn is complete: once the stream's text has caught up with the turn's end.

Events out: `TurnDelta` (send `.delta` now) and `TurnCompleted` (send `.completed`); the shell applies them.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

from serve_app.constants import FRAME_MS

EDGE_MS = FRAME_MS
"""A piece this close outside a turn's bounds still belongs to it (word onsets are one frame coarse)."""
UNCLAIMED_MS = 5000
"""Pieces no turn claimed yet are kept this long, for a turn that is announced after its audio (a
manual commit, or speech_started with prefix padding reaching back before the VAD's decision)."""


@dataclass(frozen=True, slots=True)
class TurnDelta:
    item_id: str
    text: str


@dataclass(frozen=True, slots=True)
class TurnCompleted:
    item_id: str
    transcript: str


TurnEvent = TurnDelta | TurnCompleted


@dataclass
class _Turn:
    item_id: str
    start_ms: float
    end_ms: float | None = None
    """None while the user is still speaking it."""
    complete_after_ms: float = 0.0
    """Its text is complete once the stream's text has passed this point (input timeline)."""
    pieces: list[str] = field(default_factory=list)

    def holds(self, at_ms: float) -> bool:
        end = float("inf") if self.end_ms is None else self.end_ms + EDGE_MS
        return self.start_ms - EDGE_MS <= at_ms <= end


@dataclass(frozen=True, slots=True)
class _Segment:
    stream_ms: float
    """Where it starts on the stream's own audio."""
    input_ms: float
    """Where it starts on the session's input timeline."""
    silence: bool
    """Flush silence: all of it sits at one instant of the input timeline."""


class StreamTurns:
    def __init__(self, origin_ms: float, text_delay_ms: float) -> None:
        """`origin_ms`: where on the input timeline the stream's first audio sits."""
        self.text_delay_ms = text_delay_ms
        self._fed_ms = 0.0
        self._segments: list[_Segment] = [_Segment(0.0, origin_ms, silence=False)]
        self._input_end_ms = origin_ms
        self._frames = 0
        self._turns: list[_Turn] = []
        self._unclaimed: deque[tuple[float, str]] = deque()
        self._last_turn: _Turn | None = None
        """The turn of the last piece: a piece that continues a word (no leading space) follows it."""

    # --- what the shell tells us ------------------------------------------------------------------------

    def fed_audio(self, ms: float) -> None:
        """`ms` of the session's input audio went to the stream."""
        self._extend(ms, silence=False)
        self._input_end_ms += ms

    def fed_silence(self, ms: float) -> None:
        """`ms` of flush silence went to the stream (not on the input timeline)."""
        self._extend(ms, silence=True)

    def speech_started(self, item_id: str, start_ms: float) -> list[TurnEvent]:
        """The user started the turn `item_id` at `start_ms` (input timeline); idempotent."""
        if self._turn(item_id) is not None:
            return []
        turn = _Turn(item_id, start_ms)
        self._turns.append(turn)
        return self._claim(turn)

    def committed(
        self, item_id: str, start_ms: float, end_ms: float, speech_end_ms: float | None = None
    ) -> list[TurnEvent]:
        """The turn `item_id` was committed with the audio [start_ms, end_ms) of the input timeline. When
        server VAD says where the speech ended (`speech_end_ms`: the rest is its silence run), the turn is
        complete once the text has passed that point, typically at once: the delay of the 1B model (0.5 s)
        is shorter than the default silence run."""
        turn = self._turn(item_id)
        events: list[TurnEvent] = []
        if turn is None:
            turn = _Turn(item_id, start_ms)
            self._turns.append(turn)
        turn.start_ms, turn.end_ms = min(turn.start_ms, start_ms), end_ms
        turn.complete_after_ms = end_ms if speech_end_ms is None else min(end_ms, speech_end_ms)
        events += self._claim(turn)
        return events + self._complete()

    def frame(self, text: str | None) -> list[TurnEvent]:
        """The stream's output for its next input frame (None: padding, no text)."""
        self._frames += 1
        about_ms = self.to_input(self._frames * FRAME_MS - self.text_delay_ms)
        events: list[TurnEvent] = []
        if text:
            events += self._place(about_ms, text)
        self._forget_unclaimed(about_ms)
        return events + self._complete()

    def fail_all(self) -> list[str]:
        """The stream is gone: the item ids of every turn that will never complete (they are dropped)."""
        ids = [t.item_id for t in self._turns if t.end_ms is not None]
        self._turns = [t for t in self._turns if t.end_ms is None]
        return ids

    # --- what the shell asks ----------------------------------------------------------------------------

    @property
    def waiting(self) -> bool:
        """A committed turn waits for text still to come."""
        return any(t.end_ms is not None for t in self._turns)

    def silence_to_flush_ms(self) -> float:
        """How much silence the stream needs so every committed turn can complete (when the client has
        stopped sending audio, nothing else would push the turn's last words out)."""
        ends = [t.complete_after_ms for t in self._turns if t.end_ms is not None]
        if not ends:
            return 0.0
        needed = self.to_stream(max(ends)) + self.text_delay_ms + EDGE_MS
        return max(0.0, needed - self._fed_ms)

    def to_input(self, stream_ms: float) -> float:
        """Where a point of the stream's audio sits on the input timeline."""
        starts = [s.stream_ms for s in self._segments]
        segment = self._segments[max(0, bisect.bisect_right(starts, stream_ms) - 1)]
        if segment.silence:
            return segment.input_ms
        return segment.input_ms + max(0.0, stream_ms - segment.stream_ms)

    def to_stream(self, input_ms: float) -> float:
        """Where a point of the input timeline sits on the stream's audio (before any flush silence
        inserted at that point)."""
        for index, segment in enumerate(self._segments):
            if segment.silence:
                continue
            following = self._segments[index + 1] if index + 1 < len(self._segments) else None
            length = (following.stream_ms if following else self._fed_ms) - segment.stream_ms
            if input_ms <= segment.input_ms + length or following is None:
                return segment.stream_ms + max(0.0, input_ms - segment.input_ms)
        return self._fed_ms

    # --- inside -----------------------------------------------------------------------------------------

    def _extend(self, ms: float, *, silence: bool) -> None:
        last = self._segments[-1]
        if last.silence != silence:
            self._segments.append(_Segment(self._fed_ms, self._input_end_ms, silence))
            del self._segments[:-64]  # flushes are rare; the oldest segments are long past every turn
        self._fed_ms += ms

    def _turn(self, item_id: str) -> _Turn | None:
        return next((t for t in self._turns if t.item_id == item_id), None)

    def _place(self, about_ms: float, text: str) -> list[TurnEvent]:
        continuing = not text[:1].isspace() and self._last_turn in self._turns
        turn = self._last_turn if continuing else next((t for t in self._turns if t.holds(about_ms)), None)
        if turn is None:
            self._unclaimed.append((about_ms, text))
            self._last_turn = None
            return []
        self._last_turn = turn
        if not turn.pieces:
            text = text.lstrip()
        turn.pieces.append(text)
        return [TurnDelta(turn.item_id, text)] if text else []

    def _claim(self, turn: _Turn) -> list[TurnEvent]:
        claimed = [text for at, text in self._unclaimed if turn.holds(at)]
        self._unclaimed = deque((at, text) for at, text in self._unclaimed if not turn.holds(at))
        text = "".join(claimed)
        if not turn.pieces:
            text = text.lstrip()
        if not text:
            return []
        turn.pieces.append(text)
        return [TurnDelta(turn.item_id, text)]

    def _forget_unclaimed(self, now_ms: float) -> None:
        while self._unclaimed and self._unclaimed[0][0] < now_ms - UNCLAIMED_MS:
            self._unclaimed.popleft()

    def _complete(self) -> list[TurnEvent]:
        """Committed turns whose end the stream's text has passed."""
        heard_ms = self._frames * FRAME_MS - self.text_delay_ms  # on the stream's own audio
        events: list[TurnEvent] = []
        for turn in list(self._turns):
            if turn.end_ms is not None and heard_ms >= self.to_stream(turn.complete_after_ms) + EDGE_MS:
                self._turns.remove(turn)
                events.append(TurnCompleted(turn.item_id, "".join(turn.pieces).strip()))
        return events
