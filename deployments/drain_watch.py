"""Tells a model replica that Serve is stopping it (downscale, redeploy), while its sessions still run.

Serve gives the user class no hook before it drains: the controller marks the replica STOPPING, routers
drop it at once, and the replica waits for its ongoing requests — a session's lease is one, for as long
as `graceful_shutdown_timeout_s` — before `__del__`. So a replica holding sessions asks the controller for
its own state once per `POLL_S`; a STOPPING replica can then move its sessions instead of waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import ray
from ray import serve

logger = logging.getLogger("ray.serve")

POLL_S = 1.0
"""How often a replica with sessions asks; a drain is noticed within this (plus one controller call)."""
STOPPING = "STOPPING"
_CONTROLLER = "SERVE_CONTROLLER_ACTOR"  # ray.serve._private.constants.SERVE_CONTROLLER_NAME
_NAMESPACE = "serve"


class DrainWatch:
    def __init__(self, replica_id: str, has_sessions: Callable[[], bool], poll_s: float = POLL_S) -> None:
        context = serve.get_replica_context()
        self._app, self._deployment = context.app_name, context.deployment
        self._replica_id = replica_id
        self._has_sessions = has_sessions
        self._poll_s = poll_s
        self.stopping = False
        """Set once the controller said this replica is STOPPING (it never runs again)."""

    async def wait_until_stopping(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            if not self._has_sessions():
                continue  # nothing to move: a drain finishes by itself
            try:
                state = await self._state()
            except Exception as exc:  # the controller restarting, or busy: ask again next time
                logger.debug("drain watch: cannot ask the controller: %r", exc)
                continue
            if state == STOPPING:
                self.stopping = True
                return

    async def _state(self) -> str | None:
        controller = ray.get_actor(_CONTROLLER, namespace=_NAMESPACE)
        details = await controller.get_deployment_details.remote(self._app, self._deployment)
        for replica in details.replicas:
            if replica.replica_id == self._replica_id:
                return str(replica.state.value if hasattr(replica.state, "value") else replica.state)
        return None
