"""The Starlette app: one realtime session per WebSocket, plus /v1/models, /healthz and /v1/status, and
/v1/realtime/client_secrets (client_secrets.py).

The same app runs in-process (tests, no Ray) and inside the Ray ingress deployment; only the gateway
that finds a model slot differs. Each socket's lifetime is `serve_app/server/connection.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from serve_app.config import AppConfig, ModelTraits
from serve_app.delegate.client import DelegateClient
from serve_app.server.client_secrets import client_secrets_route
from serve_app.server.connection import ConnectionShared, RealtimeConnection
from serve_app.server.gateway import ModelGateway
from serve_app.server.key_sessions import KeySessions
from serve_app.server.listener import VadWorker
from serve_app.server.loop_lag import LoopLag
from serve_app.server.observer import NullObserver, SessionObserver
from serve_app.server.transcription import TranscriptionPort
from serve_app.server.transcription_sessions import TranscriptionSessions
from serve_app.server.web import web_routes
from serve_app.webrtc.calls import Calls
from serve_app.webrtc.owners import CallOwners
from serve_app.webrtc.routes import call_routes, open_owner_port, sideband

HEALTHZ_TIMEOUT_S = 0.5
"""/healthz answers within this even when the readiness check hangs (503 then): a probe must not wait on a
busy controller during start-up."""
STATUS_NOTE = (
    "models: per model, each replica's capacity as last reported; age_s says how long ago (a Ray replica "
    "reports at each admission, refusal and session end; {} = no session through this ingress yet)"
)


def build_realtime_app(
    gateway: ModelGateway,
    config: AppConfig,
    observer: SessionObserver | None = None,
    transcription: TranscriptionPort | None = None,
    streaming_asr: ModelGateway | None = None,
    call_owners: CallOwners | None = None,
) -> Starlette:
    """`transcription`: where committed user turns are transcribed (None: a session that asks for it
    gets `.failed` for each turn, saying the server has no ASR). `streaming_asr`: where the streaming ASR
    backend's slots are (config.asr's kyutai backend, by its id), for sessions whose transcription
    `model` names it. `call_owners`: with several ingress replicas, where each serves its WebRTC calls'
    hangups and sidebands (serve_app/webrtc/owners.py; None: every call is in this process)."""
    obs: SessionObserver = observer or NullObserver()
    loop_lag = LoopLag()
    key_sessions = KeySessions(config.server.max_sessions_per_key)
    vad = VadWorker()
    transcribing = TranscriptionSessions()

    # The embedded tiny checkpoints answer with noise: clients (the demo page) say so.
    random_weights = {m.id for m in config.models if m.spec.tiny_seed is not None}

    async def models(_: Request) -> JSONResponse:
        created = 0
        data = [
            {
                "id": m,
                "object": "model",
                "created": created,
                "owned_by": "kyutai",
                "random_weights": m in random_weights,
                **_persona_fields(config.traits(m)),
            }
            for m in gateway.model_ids()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def healthz(_: Request) -> JSONResponse:
        try:
            ready = await asyncio.wait_for(gateway.is_ready(), HEALTHZ_TIMEOUT_S)
        except TimeoutError:
            ready = False
        return JSONResponse({"status": "ok" if ready else "warming_up"}, status_code=200 if ready else 503)

    async def status(_: Request) -> JSONResponse:
        loop_lag.ensure_running()
        return JSONResponse(
            {
                "object": "status",
                "ingress": {"loop_lag_ms": round(1000 * loop_lag.recent_s, 1)},
                "models": gateway.status(),
                # Transcription sessions hold no Moshi slot: their own count, and the streaming ASR's slots.
                "transcription": {
                    "sessions": transcribing.status(),
                    "streaming_asr": {} if streaming_asr is None else streaming_asr.status(),
                },
                "note": STATUS_NOTE,
            }
        )

    # One delegate client per model that has a delegate (its HTTP connections are shared by the sessions).
    delegates = {m.id: DelegateClient(m.delegate) for m in config.models if m.delegate is not None}
    shared = ConnectionShared(
        obs, loop_lag, key_sessions, vad, transcription, streaming_asr, transcribing, delegates
    )

    calls = Calls(gateway, config, shared, call_owners)

    async def realtime(ws: WebSocket) -> None:
        loop_lag.ensure_running()
        if "call_id" in ws.query_params:
            await sideband(calls, ws)  # joins a WebRTC call's events (serve_app/webrtc/)
            return
        await RealtimeConnection(ws, gateway, config, shared).run()

    routes = [
        WebSocketRoute("/v1/realtime", realtime),
        WebSocketRoute("/realtime", realtime),
        Route("/v1/models", models),
        Route("/healthz", healthz),
        Route("/v1/status", status),
        client_secrets_route(gateway, config),
        *call_routes(calls),
        *web_routes(),  # last: the demo's "/" and "/web/*" must not shadow the API
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        owner_port = await open_owner_port(calls)  # only with call_owners
        yield
        # Shutting down: calls still open are hung up (their slots freed, their peers told), and the
        # delegates' HTTP connections closed.
        await calls.close_all()
        if owner_port is not None:
            await owner_port.stop()
        for client in delegates.values():
            await client.aclose()

    return Starlette(routes=routes, lifespan=lifespan)


def _persona_fields(traits: ModelTraits | None) -> dict[str, object]:
    """What a `/v1/models` entry says of the model's prompt channel: the voices a session's `voice` may
    name (empty: it is only echoed) and whether `instructions` steer it (else they are only echoed)."""
    if traits is None:
        return {"voices": [], "default_voice": None, "follows_instructions": False}
    return {
        "voices": list(traits.voices),
        "default_voice": traits.default_voice,
        "follows_instructions": traits.follows_instructions,
    }
