"""One realtime WebSocket's lifetime: admission, then the pumps between the client, the session core and
the model slot, then the close.

`serve_app/server/app.py` routes each socket here; this module holds everything that lives as long as one
socket does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import assert_never

from starlette.websockets import WebSocket, WebSocketDisconnect

from serve_app.config import AppConfig, ModelTraits
from serve_app.delegate.client import DelegateClient
from serve_app.delegate.config import DelegateConfig
from serve_app.protocol.dialect import api_key_from_handshake, detect_dialect, select_subprotocol
from serve_app.protocol.errors import WS_1000_NORMAL_CLOSURE, WS_1011_INTERNAL_ERROR, ClientError, close_code
from serve_app.server.api_error import ApiError
from serve_app.server.client_channel import ClientChannel, WebSocketChannel
from serve_app.server.client_secrets import MINT_HINT, Admitted, MintedKey, admit
from serve_app.server.delegate_pump import DelegatePump
from serve_app.server.gateway import GatewayError, ModelGateway, ModelNotFound, SlotStream
from serve_app.server.key_sessions import KeySessions
from serve_app.server.listener import SessionListener, VadWorker
from serve_app.server.loop_lag import LoopLag
from serve_app.server.observer import SessionObserver
from serve_app.server.send_queue import ClientTooSlow, SendQueue
from serve_app.server.stream_transcription import StreamingTranscription
from serve_app.server.transcription import TranscriptionPort, TranscriptionPump
from serve_app.server.transcription_sessions import INTENT, TranscriptionSessions, transcription_backend
from serve_app.session.config import SessionKind
from serve_app.session.engine_requests import ApplyPersona, EngineRequest, Say, StopSaying
from serve_app.session.outbox import OutgoingEvent
from serve_app.session.session import RealtimeSession

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 1.0
"""How long closing a socket may wait for it to drain (a client that stopped reading never drains it)."""


@dataclass(frozen=True)
class ConnectionShared:
    """What every socket of this app uses alike (built once per app by `build_realtime_app`)."""

    obs: SessionObserver
    loop_lag: LoopLag
    key_sessions: KeySessions
    vad: VadWorker
    transcription: TranscriptionPort | None
    streaming_asr: ModelGateway | None
    transcribing: TranscriptionSessions
    delegates: Mapping[str, DelegateClient] = field(default_factory=dict)
    """Each model id's delegate client (serve_app/delegate/), for the models that have one."""


class RealtimeConnection:
    """Pumps one socket: client text → session → slot audio; slot frames → session → client text."""

    def __init__(
        self,
        channel: ClientChannel | WebSocket,
        gateway: ModelGateway,
        config: AppConfig,
        shared: ConnectionShared,
    ) -> None:
        """`channel`: the client side (a bare WebSocket is wrapped as one)."""
        self.channel = WebSocketChannel(channel) if isinstance(channel, WebSocket) else channel
        self.loop_lag = shared.loop_lag
        self.key_sessions = shared.key_sessions
        self.gateway = gateway
        self.config = config
        self.obs = shared.obs
        headers = dict(self.channel.headers)
        self.subprotocols: list[str] = list(self.channel.subprotocols)
        self.query = dict(self.channel.query)
        self.headers = headers
        # The key decides before the model does: a client secret fixes the session's model, kind and
        # first configuration (client_secrets.py), whatever the URL says.
        key = api_key_from_handshake(headers, self.subprotocols, self.query)
        self.admission = admit(key, config.server, time.time())
        minted = self.admission.minted if isinstance(self.admission, Admitted) else None
        self.model_id = minted.model if minted else (self.query.get("model") or "")
        self.streaming_asr = shared.streaming_asr
        self.transcribing = shared.transcribing
        self.asr_backend = None
        if (minted.kind.value if minted else self.query.get("intent")) == INTENT:
            # A transcription session: no Moshi; its model is the ASR backend the URL names (or the default).
            self.asr_backend = transcription_backend(config.asr, self.model_id)
            self.model_id = self.asr_backend.id
        self.session_id = f"sess_{uuid.uuid4().hex[:24]}"
        self.session = RealtimeSession(
            session_id=self.session_id,
            model_id=self.model_id,
            dialect=detect_dialect(headers, self.subprotocols, config.server.dialect),
            settings=config.session,
            now_epoch_s=time.time(),
            traits=self._traits(),
            kind=SessionKind.REALTIME if self.asr_backend is None else SessionKind.TRANSCRIPTION,
            delegate=self._delegate_config(),
        )
        if minted is not None:
            self._preset(minted)
        server = config.server
        self.outbox = SendQueue(max_bytes=server.send_queue_bytes, max_audio_ms=server.send_queue_audio_ms)
        self.vad = shared.vad
        self.listener = SessionListener(shared.vad, self.session, self._flush)
        self.transcriber = TranscriptionPump(shared.transcription, self.session, self._flush)
        self.stt = StreamingTranscription(
            shared.streaming_asr,
            config.asr,
            self.session,
            self._flush,
            fallback_model=None if self.asr_backend is None else self.asr_backend.id,
        )
        self.delegate = DelegatePump(
            shared.delegates.get(self.model_id), self._delegate_config(), self.session, self._flush, self.obs
        )
        self.stream: SlotStream | None = None
        self.engine_requests: deque[EngineRequest] = deque()
        """The session's engine requests not yet handed to the slot, in the session's order."""
        self.engine_requests_ready = asyncio.Event()
        self.engine_requests_lock = asyncio.Lock()
        """One sender at a time, so the slot gets the requests in order (StopSaying before a new Say)."""
        self.first_input_at: float | None = None
        self.sending_since: float | None = None
        """When the send in progress started (None: none): a client that stops reading blocks it."""
        self.first_audio_seen = False
        self.log = {"session_id": self.session_id, "model": self.model_id}
        self.reject_reason = ""
        """Why the session was refused, for the log (the client gets the code only)."""
        self.reject_message: str | None = None
        """What the refused client's error says instead of its code's usual sentence (an expired key)."""

    def _preset(self, minted: MintedKey) -> None:
        """A client secret's session configuration, from the session's start (session.created shows it)."""
        try:
            self.session.preset(minted.session)
        except ClientError as exc:  # the server's models changed since it was minted
            message = f"This client secret's session no longer fits this server: {exc.message} {MINT_HINT}"
            self.admission = ApiError(401, "invalid_api_key", message)

    def _delegate_config(self) -> DelegateConfig | None:
        model = None if self.asr_backend is not None else self.config.model(self.model_id)
        return None if model is None else model.delegate

    def _traits(self) -> ModelTraits | None:
        """What the session's model does with a persona; None for a transcription session or an unknown
        model (refused at admission)."""
        if self.asr_backend is not None or self.model_id not in self.gateway.model_ids():
            return None
        return self.gateway.traits(self.model_id)

    async def run(self) -> None:
        await self.channel.accept(select_subprotocol(self.subprotocols))
        admitted = self.admission if isinstance(self.admission, Admitted) else None
        # An `ek_` session counts against the API key that minted it.
        with self.key_sessions.hold(None if admitted is None else admitted.identity) as allowed:
            code = self._admission_error(allowed)
            if code is None:
                try:
                    if self.asr_backend is None:
                        self.stream = await self.gateway.open_session(self.model_id, self.session_id)
                    else:
                        await self._admit_transcription()
                except GatewayError as exc:
                    code, self.reject_reason = exc.code, str(exc)
            if code is not None:
                await self.stt.aclose()
                await self._reject(code)
                return
            self.obs.session_started(self.model_id)
            logger.info("session started", extra=self.log)
            try:
                with self.transcribing.hold(self.model_id) if self.session.transcribing else _nothing():
                    await self._serve(self.stream)
            finally:
                if self.stream is not None:
                    await self.stream.close()
                await self.stt.aclose()
                self.obs.session_ended(self.model_id)
                logger.info("session ended", extra=self.log)

    async def _admit_transcription(self) -> None:
        """A transcription session on a streaming backend holds its ASR slot from the start, so a full
        ASR deployment refuses it at once (server_at_capacity) rather than failing each turn later; a
        turn-by-turn backend's session only queues its turns (one at a time)."""
        backend = self.asr_backend
        assert backend is not None
        if not backend.streaming:
            return
        if self.streaming_asr is None:
            raise ModelNotFound(f"the {backend.id} ASR backend has no streaming slots on this server")
        self.stt.adopt(await self.streaming_asr.open_session(backend.id, self.session_id))

    def _admission_error(self, key_allowed: bool) -> str | None:
        origins = self.config.server.allowed_origins
        if origins and "origin" in self.headers and self.headers["origin"] not in origins:
            return "origin_not_allowed"
        if isinstance(self.admission, ApiError):
            self.reject_message = self.reject_reason = self.admission.message
            return self.admission.code
        if not key_allowed:
            return "too_many_sessions"
        if self.asr_backend is None and self.model_id not in self.gateway.model_ids():
            return "model_not_found"
        limit_ms = self.config.server.max_loop_lag_ms
        if limit_ms is not None and 1000 * self.loop_lag.recent_s > limit_ms:
            self.reject_reason = f"the ingress loop is {1000 * self.loop_lag.recent_s:.0f} ms late"
            return "server_at_capacity"
        vad_limit_ms = self.config.server.max_vad_lag_ms
        if vad_limit_ms is not None and 1000 * self.vad.lag_s > vad_limit_ms:
            self.reject_reason = f"the server VAD is {1000 * self.vad.lag_s:.0f} ms late"
            return "server_at_capacity"
        return None

    async def _reject(self, code: str) -> None:
        self.obs.session_rejected(self.model_id, code)
        # The one log line of a refused session on this side (the gateway logs its attempts at DEBUG).
        reason = f" ({self.reject_reason})" if self.reject_reason else ""
        logger.info("session rejected: %s%s", code, reason, extra={**self.log, "code": code})
        self.session.fail(code, self.reject_message)
        for event in self.session.events_to_send():
            await self.channel.send(event)
        await self._close(close_code(code))

    async def _close(self, code: int) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.channel.close(code), CLOSE_TIMEOUT_S)

    async def _serve(self, stream: SlotStream | None) -> None:
        """`stream`: the session's Moshi slot (None: a transcription session, which has none)."""
        self.session.connect()
        self._flush()
        writer = asyncio.create_task(self._write())
        pumps = [
            asyncio.create_task(self._read_client(stream)),
            *([] if stream is None else [asyncio.create_task(self._read_engine(stream))]),
            *([] if stream is None else [asyncio.create_task(self._pump_engine_requests(stream))]),
            asyncio.create_task(self._tick_clock()),
            asyncio.create_task(self.listener.run()),
            asyncio.create_task(self.transcriber.run()),
            asyncio.create_task(self.stt.run()),
        ]
        closing = WS_1000_NORMAL_CLOSURE
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
                    closing = close_code("client_too_slow")
                elif isinstance(exc, GatewayError):
                    logger.warning("session failed: %s (%s)", exc.code, exc, extra=self.log)
                    self.session.fail(exc.code)
                    self._flush()
                    closing = close_code(exc.code)
                elif exc is not None and not isinstance(exc, WebSocketDisconnect):
                    logger.exception("session crashed", exc_info=exc, extra=self.log)
                    self.session.fail("server_error")
                    self._flush()
                    closing = WS_1011_INTERNAL_ERROR
            if self.session.failure is not None and closing == WS_1000_NORMAL_CLOSURE:
                # The session ended itself (a limit): its error is queued already.
                logger.info("session ended: %s", self.session.failure, extra=self.log)
                closing = close_code(self.session.failure)
        finally:
            self.session.close()
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            await self.delegate.aclose()
            if too_slow:
                writer.cancel()
            else:
                self.outbox.finish()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(writer, timeout=2.0)
            await self._close(closing)

    def _flush(self) -> None:
        # Draining synchronously into one queue keeps the session's event order on the wire; a full
        # queue raises ClientTooSlow out of the pump that produced the event.
        self.stt.sync()
        requests = self.session.transcription_requests()
        if requests:
            self.transcriber.submit(self.stt.take(requests))
        self.delegate.submit(self.session.delegate_asks())
        # Engine requests made by the clock, the engine's frames or server VAD (a script's deadline, a
        # barge-in's StopSaying) go out through the request pump, behind any not yet sent.
        self.engine_requests.extend(self.session.engine_requests())
        if self.engine_requests:
            self.engine_requests_ready.set()
        for event in self.session.events_to_send():
            self.outbox.put(event)

    async def _write(self) -> None:
        while (event := await self.outbox.get()) is not None:
            self._observe(event)
            # Watched by the clock pump (a timeout per send would cost a task per message).
            self.sending_since = time.monotonic()
            await self.channel.send(event)
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

    async def _read_client(self, stream: SlotStream | None) -> None:
        while True:
            data = await self.channel.receive_text()
            if data is None:
                return
            self.session.receive_client_text(data)
            if stream is not None:
                # Before the audio: a prompted model's persona must reach the slot ahead of its first step.
                await self._send_engine_requests(stream)
            for pcm in self.session.audio_for_engine():
                if self.first_input_at is None:
                    self.first_input_at = time.monotonic()
                if stream is not None:
                    await stream.send_audio(pcm)
                self.listener.hear(pcm)
                await self.stt.hear(pcm)
            self._flush()
            if self.session.closed:
                return

    async def _send_engine_requests(self, stream: SlotStream) -> None:
        """Hand every engine request the session has made so far to the slot, in order."""
        async with self.engine_requests_lock:
            self.engine_requests.extend(self.session.engine_requests())
            while self.engine_requests:
                await _hand_to_slot(stream, self.engine_requests.popleft())

    async def _pump_engine_requests(self, stream: SlotStream) -> None:
        while True:
            await self.engine_requests_ready.wait()
            self.engine_requests_ready.clear()
            await self._send_engine_requests(stream)

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


async def _hand_to_slot(stream: SlotStream, request: EngineRequest) -> None:
    match request:
        case ApplyPersona(persona=persona):
            await stream.set_persona(persona)
        case Say(text=text):
            await stream.say(text)
        case StopSaying():
            await stream.stop_saying()
        case _:
            assert_never(request)


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield
