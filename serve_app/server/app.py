"""The Starlette app: one realtime session per WebSocket, plus /v1/models and /healthz.

The same app runs in-process (tests, no Ray) and inside the Ray ingress deployment; only the gateway
that finds a model slot differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from serve_app.config import AppConfig
from serve_app.protocol.dialect import api_key_from_handshake, detect_dialect, select_subprotocol
from serve_app.server.gateway import GatewayError, ModelGateway, SlotStream
from serve_app.server.key_sessions import KeySessions
from serve_app.server.listener import SessionListener, VadWorker
from serve_app.server.loop_lag import LoopLag
from serve_app.server.observer import NullObserver, SessionObserver
from serve_app.server.send_queue import ClientTooSlow, SendQueue
from serve_app.server.stream_transcription import StreamingTranscription
from serve_app.server.transcription import TranscriptionPort, TranscriptionPump
from serve_app.server.web import web_routes
from serve_app.session.outbox import OutgoingEvent
from serve_app.session.session import RealtimeSession

logger = logging.getLogger(__name__)

WS_1000_NORMAL_CLOSURE = 1000
WS_1008_POLICY_VIOLATION = 1008
WS_1011_INTERNAL_ERROR = 1011
WS_1013_TRY_AGAIN_LATER = 1013
_CLOSE_FOR_CODE = {
    "invalid_api_key": WS_1008_POLICY_VIOLATION,
    "model_not_found": WS_1008_POLICY_VIOLATION,
    "server_at_capacity": WS_1013_TRY_AGAIN_LATER,
    "session_fell_behind": WS_1013_TRY_AGAIN_LATER,
    "too_many_sessions": WS_1008_POLICY_VIOLATION,
    "origin_not_allowed": WS_1008_POLICY_VIOLATION,
    "client_too_slow": WS_1008_POLICY_VIOLATION,
    "session_expired": WS_1008_POLICY_VIOLATION,
    "idle_timeout": WS_1008_POLICY_VIOLATION,
}
CLOSE_TIMEOUT_S = 1.0
"""How long closing a socket may wait for it to drain (a client that stopped reading never drains it)."""


def build_realtime_app(
    gateway: ModelGateway,
    config: AppConfig,
    observer: SessionObserver | None = None,
    transcription: TranscriptionPort | None = None,
    streaming_asr: ModelGateway | None = None,
) -> Starlette:
    """`transcription`: where committed user turns are transcribed (None: a session that asks for it
    gets `.failed` for each turn, saying the server has no ASR). `streaming_asr`: where the streaming ASR
    backend's slots are (config.asr's kyutai backend, by its id), for sessions whose transcription
    `model` names it."""
    obs: SessionObserver = observer or NullObserver()
    loop_lag = LoopLag()
    key_sessions = KeySessions(config.server.max_sessions_per_key)
    vad = VadWorker()

    async def models(_: Request) -> JSONResponse:
        created = 0
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "kyutai"}
            for m in gateway.model_ids()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def healthz(_: Request) -> JSONResponse:
        ready = await gateway.is_ready()
        return JSONResponse({"status": "ok" if ready else "warming_up"}, status_code=200 if ready else 503)

    async def status(_: Request) -> JSONResponse:
        loop_lag.ensure_running()
        return JSONResponse(
            {
                "object": "status",
                "ingress": {"loop_lag_ms": round(1000 * loop_lag.recent_s, 1)},
                "models": gateway.status(),
            }
        )

    async def realtime(ws: WebSocket) -> None:
        loop_lag.ensure_running()
        shared = _Shared(obs, loop_lag, key_sessions, vad, transcription, streaming_asr)
        await _RealtimeConnection(ws, gateway, config, shared).run()

    routes = [
        WebSocketRoute("/v1/realtime", realtime),
        WebSocketRoute("/realtime", realtime),
        Route("/v1/models", models),
        Route("/healthz", healthz),
        Route("/v1/status", status),
        *web_routes(),  # last: the demo's "/" and "/web/*" must not shadow the API
    ]
    return Starlette(routes=routes)


@dataclass(frozen=True)
class _Shared:
    """What every socket of this app uses alike."""

    obs: SessionObserver
    loop_lag: LoopLag
    key_sessions: KeySessions
    vad: VadWorker
    transcription: TranscriptionPort | None
    streaming_asr: ModelGateway | None


class _RealtimeConnection:
    """Pumps one socket: client text → session → slot audio; slot frames → session → client text."""

    def __init__(
        self,
        ws: WebSocket,
        gateway: ModelGateway,
        config: AppConfig,
        shared: _Shared,
    ) -> None:
        self.ws = ws
        self.loop_lag = shared.loop_lag
        self.key_sessions = shared.key_sessions
        self.gateway = gateway
        self.config = config
        self.obs = shared.obs
        headers = {k.lower(): v for k, v in ws.headers.items()}
        self.subprotocols: list[str] = list(ws.scope.get("subprotocols") or [])
        self.query = dict(ws.query_params)
        self.headers = headers
        self.model_id = self.query.get("model") or ""
        self.session_id = f"sess_{uuid.uuid4().hex[:24]}"
        self.session = RealtimeSession(
            session_id=self.session_id,
            model_id=self.model_id,
            dialect=detect_dialect(headers, self.subprotocols, config.server.dialect),
            settings=config.session,
        )
        server = config.server
        self.outbox = SendQueue(max_bytes=server.send_queue_bytes, max_audio_ms=server.send_queue_audio_ms)
        self.vad = shared.vad
        self.listener = SessionListener(shared.vad, self.session, self._flush)
        self.transcriber = TranscriptionPump(shared.transcription, self.session, self._flush)
        self.stt = StreamingTranscription(shared.streaming_asr, config.asr, self.session, self._flush)
        self.stream: SlotStream | None = None
        self.first_input_at: float | None = None
        self.sending_since: float | None = None
        """When the send in progress started (None: none): a client that stops reading blocks it."""
        self.first_audio_seen = False
        self.log = {"session_id": self.session_id, "model": self.model_id}

    async def run(self) -> None:
        await self.ws.accept(subprotocol=select_subprotocol(self.subprotocols))
        keys = self.config.server.effective_api_keys()
        key = api_key_from_handshake(self.headers, self.subprotocols, self.query) if keys else None
        with self.key_sessions.hold(key if key in keys else None) as allowed:
            code = self._admission_error(keys, key, allowed)
            if code is None:
                try:
                    self.stream = await self.gateway.open_session(self.model_id, self.session_id)
                except GatewayError as exc:
                    code = exc.code
            if code is not None:
                await self._reject(code)
                return
            assert self.stream is not None
            self.obs.session_started(self.model_id)
            logger.info("session started", extra=self.log)
            try:
                await self._serve(self.stream)
            finally:
                await self.stream.close()
                self.obs.session_ended(self.model_id)
                logger.info("session ended", extra=self.log)

    def _admission_error(self, keys: frozenset[str], key: str | None, key_allowed: bool) -> str | None:
        origins = self.config.server.allowed_origins
        if origins and "origin" in self.headers and self.headers["origin"] not in origins:
            return "origin_not_allowed"
        if keys and key not in keys:
            return "invalid_api_key"
        if not key_allowed:
            return "too_many_sessions"
        if self.model_id not in self.gateway.model_ids():
            return "model_not_found"
        limit_ms = self.config.server.max_loop_lag_ms
        if limit_ms is not None and 1000 * self.loop_lag.recent_s > limit_ms:
            logger.info("ingress loop %.0f ms late: refusing", 1000 * self.loop_lag.recent_s, extra=self.log)
            return "server_at_capacity"
        vad_limit_ms = self.config.server.max_vad_lag_ms
        if vad_limit_ms is not None and 1000 * self.vad.lag_s > vad_limit_ms:
            logger.info("server VAD %.0f ms late: refusing", 1000 * self.vad.lag_s, extra=self.log)
            return "server_at_capacity"
        return None

    async def _reject(self, code: str) -> None:
        self.obs.session_rejected(self.model_id, code)
        logger.info("session rejected", extra={**self.log, "code": code})
        self.session.fail(code)
        for text in self.session.data_to_send():
            await self.ws.send_text(text)
        await self._close(_CLOSE_FOR_CODE.get(code, WS_1011_INTERNAL_ERROR))

    async def _close(self, code: int) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code=code), CLOSE_TIMEOUT_S)

    async def _serve(self, stream: SlotStream) -> None:
        self.session.connect()
        self._flush()
        writer = asyncio.create_task(self._write())
        pumps = [
            asyncio.create_task(self._read_client(stream)),
            asyncio.create_task(self._read_engine(stream)),
            asyncio.create_task(self._tick_clock()),
            asyncio.create_task(self.listener.run()),
            asyncio.create_task(self.transcriber.run()),
            asyncio.create_task(self.stt.run()),
        ]
        close_code = WS_1000_NORMAL_CLOSURE
        too_slow = False
        try:
            done, _ = await asyncio.wait([*pumps, writer], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if isinstance(exc, ClientTooSlow):
                    # Its error could only queue behind what it does not read: close at once.
                    logger.warning("session failed: client_too_slow (%s)", exc, extra=self.log)
                    self.obs.error_sent(self.model_id, "client_too_slow")
                    self.session.fail("client_too_slow")
                    too_slow = True
                    close_code = WS_1008_POLICY_VIOLATION
                elif isinstance(exc, GatewayError):
                    logger.warning("session failed: %s (%s)", exc.code, exc, extra=self.log)
                    self.session.fail(exc.code)
                    self._flush()
                    close_code = _CLOSE_FOR_CODE.get(exc.code, WS_1011_INTERNAL_ERROR)
                elif exc is not None and not isinstance(exc, WebSocketDisconnect):
                    logger.exception("session crashed", exc_info=exc, extra=self.log)
                    self.session.fail("server_error")
                    self._flush()
                    close_code = WS_1011_INTERNAL_ERROR
            if self.session.failure is not None and close_code == WS_1000_NORMAL_CLOSURE:
                # The session ended itself (a limit): its error is queued already.
                logger.info("session ended: %s", self.session.failure, extra=self.log)
                close_code = _CLOSE_FOR_CODE.get(self.session.failure, WS_1011_INTERNAL_ERROR)
        finally:
            self.session.close()
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            if too_slow:
                writer.cancel()
            else:
                self.outbox.finish()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(writer, timeout=2.0)
            await self._close(close_code)

    def _flush(self) -> None:
        # Draining synchronously into one queue keeps the session's event order on the wire; a full
        # queue raises ClientTooSlow out of the pump that produced the event.
        self.stt.sync()
        requests = self.session.transcription_requests()
        if requests:
            self.transcriber.submit(self.stt.take(requests))
        for event in self.session.events_to_send():
            self.outbox.put(event)

    async def _write(self) -> None:
        while (event := await self.outbox.get()) is not None:
            self._observe(event)
            # Watched by the clock pump (a timeout per send would cost a task per message).
            self.sending_since = time.monotonic()
            await self.ws.send_text(event.text)
            self.sending_since = None

    def _observe(self, event: OutgoingEvent) -> None:
        if event.error_code is not None:
            self.obs.error_sent(self.model_id, event.error_code)
        elif (
            event.kind == "response.output_audio.delta"
            and not self.first_audio_seen
            and self.first_input_at is not None
        ):
            self.first_audio_seen = True
            self.obs.first_audio(self.model_id, time.monotonic() - self.first_input_at)

    async def _read_client(self, stream: SlotStream) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            self.session.receive_client_text(data)
            for pcm in self.session.audio_for_engine():
                if self.first_input_at is None:
                    self.first_input_at = time.monotonic()
                await stream.send_audio(pcm)
                self.listener.hear(pcm)
                await self.stt.hear(pcm)
            self._flush()
            if self.session.closed:
                return

    async def _read_engine(self, stream: SlotStream) -> None:
        async for frame in stream.frames():
            self.session.receive_engine_frame(frame)
            self._flush()
            if self.session.closed:
                return

    async def _tick_clock(self) -> None:
        timeout = self.config.server.send_timeout_s
        while True:
            await asyncio.sleep(self.config.server.clock_interval_s)
            now = time.monotonic()
            if self.sending_since is not None and now - self.sending_since > timeout:
                raise ClientTooSlow(f"a send has waited {timeout:g} s for the socket to drain")
            self.session.advance_clock(now)
            self._flush()
            if self.session.closed:
                return  # a limit ended it (session_expired, idle_timeout)
