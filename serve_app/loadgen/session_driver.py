"""One load session on a raw WebSocket (GA dialect): connect, stream 80 ms appends on a monotonic schedule,
read everything the server sends and timestamp what the statistics need.

Raw `websockets` rather than the `openai` SDK: the SDK would parse every event into models (the client's
CPU is the measurement's noise floor at high N), and the close code and handshake status must be seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidHandshake, InvalidStatus

from serve_app.constants import BYTES_PER_SAMPLE_PCM16, FRAME_S, SAMPLE_RATE
from serve_app.loadgen.progress import Counters
from serve_app.loadgen.record import Packet, SessionRecord
from serve_app.protocol.errors import WS_1013_TRY_AGAIN_LATER

AUDIO_DELTA = frozenset({"response.output_audio.delta", "response.audio.delta"})
"""GA and beta names: a server that answers in either dialect is measured alike."""
AUDIO_DONE = frozenset({"response.output_audio.done", "response.audio.done"})
WS_NO_CLOSE_FRAME = 1006
CLOSE_TIMEOUT_S = 2.0
PCM16_BYTES_PER_S = SAMPLE_RATE * BYTES_PER_SAMPLE_PCM16
G711_BYTES_PER_S = 8000


@dataclass(frozen=True)
class Target:
    url: str
    """The full `/v1/realtime` URL, model included (see `realtime_url`)."""
    api_key: str | None = None
    connect_timeout_s: float = 10.0
    session_update: str | None = None
    """A `session.update` JSON text sent right after `session.created` (None: the server's defaults)."""


def realtime_url(url: str, model: str) -> str:
    """`url` with `/realtime` appended when it names only the API base (`ws://host/v1`) and `model=` set
    unless it already carries one."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"{url!r}: need a ws:// or wss:// URL such as ws://127.0.0.1:8000/v1/realtime")
    path = parts.path.rstrip("/")
    if not path.endswith("realtime"):
        path = (path or "/v1") + "/realtime"
    query = dict(parse_qsl(parts.query))
    query.setdefault("model", model)
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))


def base64_size(text: str) -> int:
    """Decoded length of a base64 string, without decoding it."""
    return len(text) * 3 // 4 - (2 if text.endswith("==") else 1 if text.endswith("=") else 0)


def output_bytes_per_second(session: Any) -> float:
    """From a session object (GA `audio.output.format.type` or beta `output_audio_format`): PCM16 24 kHz
    unless G.711."""
    if not isinstance(session, dict):
        return PCM16_BYTES_PER_S
    ga = ((session.get("audio") or {}).get("output") or {}).get("format") or {}
    kind = ga.get("type") if isinstance(ga, dict) else None
    beta = session.get("output_audio_format")
    if kind in ("audio/pcmu", "audio/pcma") or beta in ("g711_ulaw", "g711_alaw"):
        return G711_BYTES_PER_S
    return PCM16_BYTES_PER_S


def _parse(message: str | bytes) -> dict[str, Any] | None:
    """A server event, or None when the message is not a JSON object."""
    try:
        event = json.loads(message)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


class _Session:
    def __init__(self, target: Target, record: SessionRecord, zero: float, counters: Counters) -> None:
        self.target = target
        self.record = record
        self.zero = zero
        self.counters = counters
        self.bytes_per_s: float = PCM16_BYTES_PER_S
        self.closing = False
        """This side started the close: whatever code follows is not the server's doing."""

    def now(self) -> float:
        return time.monotonic() - self.zero

    def refuse(self, code: str, detail: str = "") -> None:
        self.record.refusal, self.record.refusal_detail = code, detail
        self.counters.refused += 1
        if self.record.admitted_s is not None:
            self.counters.admitted -= 1

    def error(self, code: str) -> None:
        self.record.errors.append(code)
        self.counters.errors += 1

    async def connect(self) -> ClientConnection | None:
        headers = {"Authorization": f"Bearer {self.target.api_key}"} if self.target.api_key else None
        try:
            return await websockets.connect(
                self.target.url,
                additional_headers=headers,
                max_size=None,
                open_timeout=self.target.connect_timeout_s,
                close_timeout=CLOSE_TIMEOUT_S,
            )
        except InvalidStatus as exc:  # e.g. a front that answers 503 when every replica is full
            self.refuse(f"http_{exc.response.status_code}", str(exc))
        except TimeoutError as exc:
            self.refuse("connect_timeout", str(exc))
        except (OSError, InvalidHandshake) as exc:
            self.refuse("unreachable", f"{type(exc).__name__}: {exc}")
        return None

    async def await_admission(self, ws: ClientConnection) -> bool:
        deadline = time.monotonic() + self.target.connect_timeout_s
        try:
            while True:
                message = await asyncio.wait_for(ws.recv(), max(0.0, deadline - time.monotonic()))
                event = _parse(message)
                if event is None:
                    self.refuse("invalid_server_message", repr(message[:200]))
                    return False
                if event.get("type") == "error":
                    error = event.get("error") or {}
                    self.refuse(str(error.get("code") or "error"), str(error.get("message") or ""))
                    return False
                if event.get("type") == "session.created":
                    session = event.get("session") or {}
                    self.record.admitted_s = self.now()
                    self.record.session_id = str(session.get("id") or "")
                    self.bytes_per_s = output_bytes_per_second(session)
                    self.counters.admitted += 1
                    return True
        except TimeoutError:
            self.refuse("no_session_created", f"nothing within {self.target.connect_timeout_s:g} s")
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else WS_NO_CLOSE_FRAME
            self.refuse(f"close_{code}", str(exc))
        return False

    async def read(self, ws: ClientConnection) -> None:
        record = self.record
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                at = self.now()
                event = _parse(message)
                if event is None:
                    self.error("invalid_server_message")
                    continue
                kind = event.get("type")
                if kind in AUDIO_DELTA:
                    seconds = base64_size(str(event.get("delta") or "")) / self.bytes_per_s
                    record.packets.append(Packet(at, seconds, str(event.get("response_id") or "")))
                    self.counters.audio_s += seconds
                elif kind in AUDIO_DONE:
                    record.done_at.setdefault(str(event.get("response_id") or ""), at)
                elif kind == "response.done":
                    record.done_at.setdefault(str((event.get("response") or {}).get("id") or ""), at)
                elif kind == "error":
                    code = str((event.get("error") or {}).get("code") or "error")
                    if code == "server_at_capacity" and not record.packets:
                        self.refuse(code)
                    else:
                        self.error(code)
        if self.closing:
            return
        record.ended_s = self.now()
        close = ws.close_code if ws.close_code is not None else WS_NO_CLOSE_FRAME
        if record.refusal is not None:
            return
        if close == WS_1013_TRY_AGAIN_LATER and not record.packets:
            self.refuse(f"close_{close}")
        else:
            record.closed_by_server = close
            self.error(f"close_{close}")

    async def send(self, ws: ClientConnection, events: Sequence[str], offset: int) -> None:
        """80 ms appends on an absolute schedule: a late wake-up is caught up (a microphone's audio keeps
        coming), but nothing is ever sent ahead of its time."""
        record = self.record
        first_due = time.monotonic()
        with contextlib.suppress(websockets.ConnectionClosed):
            for k in itertools.count():
                due = first_due + k * FRAME_S
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                record.send_lag_max_s = max(record.send_lag_max_s, time.monotonic() - due)
                await ws.send(events[(offset + k) % len(events)])
                record.frames_sent = k + 1

    async def stream(self, ws: ClientConnection, events: Sequence[str], stop_at: float) -> None:
        if self.target.session_update is not None:
            await ws.send(self.target.session_update)
        reader = asyncio.create_task(self.read(ws))
        sender = asyncio.create_task(self.send(ws, events, offset=self.record.index * 37))
        try:
            await asyncio.wait({reader}, timeout=max(0.0, stop_at - time.monotonic()))
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            if not reader.done():
                self.closing = True
                self.record.ended_s = self.now()
                await ws.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader, CLOSE_TIMEOUT_S)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def drive_session(
    target: Target,
    index: int,
    *,
    start_at: float,
    stop_at: float,
    zero: float,
    events: Sequence[str],
    counters: Counters,
) -> SessionRecord:
    """Run one session from `start_at` to `stop_at` (monotonic seconds); record times relative to `zero`.
    Never raises for what the server does: refusals and failures end up in the record."""
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    record = SessionRecord(index=index, start_s=time.monotonic() - zero)
    session = _Session(target, record, zero, counters)
    counters.connecting += 1
    try:
        ws = await session.connect()
    finally:
        counters.connecting -= 1
    if ws is None:
        record.ended_s = session.now()
        return record
    try:
        if await session.await_admission(ws):
            await session.stream(ws, events, stop_at)
    finally:
        if record.ended_s is None:
            record.ended_s = session.now()
        session.closing = True
        await ws.close()
    return record
