"""Why the engine refuses or ends a slot. Gateways map these onto the error codes clients read."""

from __future__ import annotations


class NoFreeSlot(Exception):
    """The replica cannot take another session: every slot is taken, or its recent ticks leave no room."""


class TickBudgetFull(NoFreeSlot):
    """Slots are free, but the recent ticks say one more session would not fit in the 80 ms period."""


class SlotEnded(Exception):
    """A slot's session cannot go on; raised to (or reported for) the session that held it."""


class TickFailed(SlotEnded):
    """The model step raised: every row may be half-stepped, so every session on the engine ends."""


class FellBehind(SlotEnded):
    """The session's input waited longer than the replica's lag limit: it is ended, not served late."""

    def __init__(self, lag_s: float, limit_s: float) -> None:
        super().__init__(f"{1000 * lag_s:.0f} ms behind real time (limit {1000 * limit_s:.0f} ms)")
        self.lag_s = lag_s
        self.limit_s = limit_s


class SlotClosed(SlotEnded):
    """The slot was closed; nothing more can be pushed to it."""


class RebuildFailed(SlotEnded):
    """Rebuilding a resumed session's slot raised: that session cannot go on (the others are untouched)."""

    def __init__(self, slot: int, message: str) -> None:
        super().__init__(message)
        self.slot = slot
