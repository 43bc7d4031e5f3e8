"""/healthz answers at once at every moment of start-up: 503 until every model is ready, then 200."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from starlette.testclient import TestClient

from serve_app.config import AppConfig
from serve_app.server.app import HEALTHZ_TIMEOUT_S, build_realtime_app
from serve_app.server.gateway import SlotStream


class StartingGateway:
    """A gateway whose readiness check answers `ready` after `delay_s` (a busy controller takes ~13 s)."""

    def __init__(self, ready: bool, delay_s: float = 0.0) -> None:
        self.ready = ready
        self.delay_s = delay_s

    def model_ids(self) -> list[str]:
        return ["moshi-sft"]

    async def is_ready(self) -> bool:
        await asyncio.sleep(self.delay_s)
        return self.ready

    def status(self) -> Mapping[str, object]:
        return {"moshi-sft": {}}

    async def open_session(self, model_id: str, session_id: str) -> SlotStream:
        raise AssertionError("no session in these tests")


def _healthz(gateway: StartingGateway) -> tuple[int, dict[str, str], float]:
    with TestClient(build_realtime_app(gateway, AppConfig.embedded_default())) as client:
        started = time.monotonic()
        response = client.get("/healthz")
        return response.status_code, response.json(), time.monotonic() - started


def test_a_slow_readiness_check_answers_503_within_a_second() -> None:
    code, body, took = _healthz(StartingGateway(ready=True, delay_s=30.0))
    assert (code, body) == (503, {"status": "warming_up"})
    assert took < 1.0 and HEALTHZ_TIMEOUT_S < 1.0


def test_not_ready_is_503_at_once_and_ready_is_200() -> None:
    code, body, took = _healthz(StartingGateway(ready=False))
    assert (code, body) == (503, {"status": "warming_up"}) and took < 1.0
    code, body, _ = _healthz(StartingGateway(ready=True, delay_s=0.05))
    assert (code, body) == (200, {"status": "ok"})


def test_status_says_how_to_read_an_empty_model() -> None:
    with TestClient(build_realtime_app(StartingGateway(ready=True), AppConfig.embedded_default())) as client:
        body = client.get("/v1/status").json()
    assert body["models"] == {"moshi-sft": {}}
    assert "age_s" in body["note"] and "no session" in body["note"]
