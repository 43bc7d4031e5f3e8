"""Ingress deployment: the realtime Starlette app, one WebSocket session per socket, Ray-backed gateway.

The socket shell (serve_app.server.app) and the session core know nothing of Ray; this class only wires
the RayGateway (lease calls + frame channels) and the metrics observer into them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import ray
from ray import serve
from ray.serve import Deployment
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette

from deployments.asr import ASR_DEPLOYMENT, RayTranscription
from deployments.metrics import IngressMetrics
from deployments.ray_gateway import DEFAULT_ADMISSION_TIMEOUT_S, RayGateway
from serve_app.banner import ready_lines
from serve_app.config import AppConfig
from serve_app.heap import freeze_heap
from serve_app.server.app import build_realtime_app
from serve_app.server.keepalive import websocket_keepalive_defaults

logger = logging.getLogger("ray.serve")

BANNER_POLL_S = 1.0
BANNER_GIVE_UP_S = 3600.0


class RealtimeIngress:
    def __init__(
        self,
        config: dict[str, Any],
        models: Mapping[str, DeploymentHandle[Any]],
        asr: DeploymentHandle[Any] | None = None,
    ) -> None:
        self._config = AppConfig.model_validate(config)
        # Before Serve builds this replica's uvicorn server (it does so after this constructor).
        server = self._config.server
        websocket_keepalive_defaults(server.ping_interval_s, server.ping_timeout_s)
        self._app_name = serve.get_replica_context().app_name
        node_id = ray.get_runtime_context().get_node_id()
        self._metrics = IngressMetrics(models)
        self._gateway = RayGateway(
            models, node_id, deployment_status=self._running_models, moves=self._metrics
        )
        self._transcription = RayTranscription(asr) if asr is not None else None
        streaming = self._config.asr.streaming_backend
        self._streaming_asr: RayGateway | None = None
        if asr is not None and streaming is not None:
            # The ASR deployment leases streaming slots like a model deployment, under the backend's id.
            self._streaming_asr = RayGateway(
                {streaming.id: asr},
                node_id,
                deployment_status=lambda: {streaming.id: self._running_models().get(ASR_DEPLOYMENT, False)},
            )
        freeze_heap()  # Ray, Starlette and the SDK's event types: out of the collector's full passes
        threading.Thread(target=self._announce_when_ready, name="ready-banner", daemon=True).start()

    def _announce_when_ready(self) -> None:
        """Log the banner `make serve` prints once every deployment runs, so `serve run` and `serve deploy`
        (whose consoles and logs show the replicas' logs) tell the operator the same."""
        deadline = time.monotonic() + BANNER_GIVE_UP_S
        while time.monotonic() < deadline:
            try:
                running = self._running_models()
            except Exception:  # the controller is busy or restarting: ask again
                running = {}
            if running and all(running.values()):
                logger.info(
                    "Moshi realtime is up (paths on the HTTP port):\n%s",
                    "\n".join(ready_lines([self._config])),
                )
                return
            time.sleep(BANNER_POLL_S)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """`serve deploy` can change these in place (no restart, live sessions untouched)."""
        timeout_s = float(user_config.get("admission_timeout_s", DEFAULT_ADMISSION_TIMEOUT_S))
        self._gateway.admission_timeout_s = timeout_s
        if self._streaming_asr is not None:
            self._streaming_asr.admission_timeout_s = timeout_s

    def __serve_build_asgi_app__(self) -> Starlette:
        return build_realtime_app(
            self._gateway,
            self._config,
            observer=self._metrics,
            transcription=self._transcription,
            streaming_asr=self._streaming_asr,
        )

    def _running_models(self) -> dict[str, bool]:
        app = serve.status().applications.get(self._app_name)
        if app is None:
            return {}
        return {
            name: any(state == "RUNNING" and count > 0 for state, count in dep.replica_states.items())
            for name, dep in app.deployments.items()
        }

    def session_replicas(self) -> dict[str, dict[str, int]]:
        """session id → {replica id: frames served} for recent sessions on this ingress replica."""
        return self._gateway.ledger.snapshot()

    def session_moves(self) -> dict[str, list[dict[str, Any]]]:
        """session id → the moves of recent sessions on this ingress replica (why, from, to, gap_s)."""
        return self._gateway.ledger.moves()


IngressDeployment: Deployment = serve.deployment(
    # Each open WebSocket is one ongoing request on its ingress replica.
    max_ongoing_requests=1000,
    ray_actor_options={"num_cpus": 0.5},
    user_config={"admission_timeout_s": DEFAULT_ADMISSION_TIMEOUT_S},
)(serve.ingress()(RealtimeIngress))
