"""Ingress deployment: the realtime Starlette app, one WebSocket session per socket, Ray-backed gateway.

The socket shell (serve_app/server: app.py's routes, connection.py's one socket) and the session core know
nothing of Ray; this class only wires the RayGateway (lease calls + frame channels) and the metrics observer
into them.
"""

from __future__ import annotations

import contextlib
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
from deployments.call_owners import RayCallOwners
from deployments.metrics import IngressMetrics
from deployments.ray_gateway import DEFAULT_ADMISSION_TIMEOUT_S, RayGateway
from serve_app.banner import http_base, ready_lines
from serve_app.config import AppConfig, model_traits
from serve_app.heap import freeze_heap
from serve_app.server.app import build_realtime_app
from serve_app.server.keepalive import websocket_keepalive_defaults

logger = logging.getLogger("ray.serve")

STATUS_POLL_S = 1.0
"""How often the ingress asks Serve which deployments run (for /healthz and the ready banner) until all do;
then every READY_POLL_S (a replica lost later shows in /healthz within that)."""
READY_POLL_S = 5.0


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
        self._running: dict[str, bool] = {}
        """The latest answer of `_running_models`, kept by the watcher thread: /healthz reads it at once
        (asking Serve's controller in the request took ~13 s while it was busy starting replicas)."""
        node_id = ray.get_runtime_context().get_node_id()
        self._metrics = IngressMetrics(models)
        self._gateway = RayGateway(
            models,
            node_id,
            deployment_status=self.running,
            moves=self._metrics,
            traits={m.id: model_traits(m) for m in self._config.models},
        )
        self._transcription = RayTranscription(asr) if asr is not None else None
        streaming = self._config.asr.streaming_backend
        self._streaming_asr: RayGateway | None = None
        if asr is not None and streaming is not None:
            # The ASR deployment leases streaming slots like a model deployment, under the backend's id.
            self._streaming_asr = RayGateway(
                {streaming.id: asr},
                node_id,
                deployment_status=lambda: {streaming.id: self.running().get(ASR_DEPLOYMENT, False)},
            )
        # Hangups and sidebands for this replica's WebRTC calls reach it from the other ingress replicas.
        self._call_owners = RayCallOwners(self._app_name)
        freeze_heap()  # Ray, Starlette and the SDK's event types: out of the collector's full passes
        threading.Thread(target=self._watch_deployments, name="deployment-status", daemon=True).start()

    def running(self) -> dict[str, bool]:
        """Deployment name → has a running replica, as last seen (never waits)."""
        return self._running

    def _watch_deployments(self) -> None:
        """Keep `running` current, and log the banner `make serve` prints once every deployment runs, so
        `serve run` and `serve deploy` (whose consoles and logs show the replicas' logs) tell the operator
        the same."""
        announced = False
        while True:
            # The controller busy or restarting: keep the last answer, ask again.
            with contextlib.suppress(Exception):
                self._running = self._running_models()
            ready = bool(self._running) and all(self._running.values())
            if ready and not announced:
                announced = True
                base = self._base_url()
                logger.info(
                    "Moshi realtime is up%s:\n%s",
                    "" if base else " (paths on the HTTP port)",
                    "\n".join(ready_lines([self._config], base)),
                )
            time.sleep(READY_POLL_S if ready else STATUS_POLL_S)

    def _base_url(self) -> str:
        """This application's "http://host:port/prefix", as Serve's controller has it ("" if it cannot say:
        the banner then gives paths)."""
        from ray.serve.context import _get_global_client

        try:
            client = _get_global_client()
            assert client is not None
            details = client.get_serve_details()
            http = details.get("http_options") or {}
            prefix = details["applications"][self._app_name].get("route_prefix") or "/"
            return http_base(http.get("host"), int(http["port"]), prefix)
        except Exception:
            return ""

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
            call_owners=self._call_owners,
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
