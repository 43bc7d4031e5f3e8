"""Progress on stderr: a bar redrawn in place on a terminal, else one line per phase (logs stay readable)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TextIO

BAR_WIDTH = 20
REDRAW_S = 0.25


@dataclass
class Counters:
    """What the session drivers report as they go."""

    sessions: int = 0
    connecting: int = 0
    admitted: int = 0
    refused: int = 0
    errors: int = 0
    audio_s: float = 0.0


class Progress:
    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.counters = Counters()
        self._phase = ""
        self._phase_start = self._phase_end = time.monotonic()
        self._label = ""

    def start_run(self, label: str, sessions: int) -> None:
        self.counters = Counters(sessions=sessions)
        self._label = label

    def phase(self, name: str, seconds: float) -> None:
        """Enter a phase expected to last `seconds` (the bar fills over it)."""
        self._phase = name
        self._phase_start = time.monotonic()
        self._phase_end = self._phase_start + seconds
        if self.enabled and not self.tty:
            self._write_line(f"{self._label}{name} ({seconds:g} s): {self.counts()}")

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\x1b[K")
        self._write_line(text)

    def _write_line(self, text: str) -> None:
        self.stream.write(f"[loadgen] {text}\n")
        self.stream.flush()

    def counts(self) -> str:
        c = self.counters
        connecting = f", {c.connecting} connecting" if c.connecting else ""
        return (
            f"{c.admitted}/{c.sessions} admitted{connecting}, {c.refused} refused, {c.errors} errors, "
            f"{c.audio_s:.1f} s audio"
        )

    def render(self) -> str:
        now = time.monotonic()
        span = max(1e-9, self._phase_end - self._phase_start)
        done = min(1.0, max(0.0, (now - self._phase_start) / span))
        filled = round(done * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        elapsed = min(now, self._phase_end) - self._phase_start
        line = f"{self._label}{self._phase:<6} [{bar}] {elapsed:5.1f}/{span:.0f} s  {self.counts()}"
        # A line wider than the terminal wraps, and `\r` would then redraw only its last row.
        return line[: shutil.get_terminal_size().columns - 1]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Redraw the bar while the body runs (terminal only)."""
        if not self.tty:
            yield
            return

        async def redraw() -> None:
            while True:
                self.stream.write("\r\x1b[K" + self.render())
                self.stream.flush()
                await asyncio.sleep(REDRAW_S)

        task = asyncio.create_task(redraw())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.stream.write("\r\x1b[K")
            self.stream.flush()
