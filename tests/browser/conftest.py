"""An in-process server (uvicorn thread, no Ray) with the browser demo's routes, for tests/browser."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn

from serve_app.asr.config import AsrBackendConfig, AsrConfig
from serve_app.asr.service import AsrService
from serve_app.config import AppConfig, ModelConfig, RealtimeLimits
from serve_app.engine.spec import ModelSpec
from serve_app.server.app import build_realtime_app
from serve_app.server.local_gateway import build_local_gateway
from serve_app.server.transcription import LocalTranscription
from serve_app.server.web import web_routes
from serve_app.session.settings import SessionSettings
from tests.fixtures.net import free_port

API_KEY = "browser-demo-key"


@dataclass(frozen=True)
class DemoServer:
    host: str

    @property
    def url(self) -> str:
        return f"http://{self.host}/"


@pytest.fixture(scope="module")
def demo_server() -> Iterator[DemoServer]:
    # Chromium shares the 2 cores with the server and the engine here: only the slot count admits, and
    # neither the ingress loop's nor the VAD's lag refuses a session (tests/server and tests/ray cover those).
    lenient = RealtimeLimits(admit_fraction=None, max_lag_ms=5000)
    config = AppConfig(
        models=(ModelConfig(id="moshi-sft", spec=ModelSpec(tiny_seed=1), slots=1, realtime=lenient),),
        session=SessionSettings(utterance_silence_ms=480),
        server={"api_keys": (API_KEY,), "max_loop_lag_ms": None, "max_vad_lag_ms": None},
        asr=AsrConfig(
            backends=(AsrBackendConfig(id="pocketsphinx", kind="pocketsphinx"),), default="pocketsphinx"
        ),
    )
    gateway = build_local_gateway(config)
    app = build_realtime_app(gateway, config, transcription=LocalTranscription(AsrService(config.asr)))
    app.router.routes.extend(web_routes())  # what the app does once app.py adds `*web_routes()` last
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            ws_ping_interval=config.server.ping_interval_s,
            ws_ping_timeout=config.server.ping_timeout_s,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "in-process server did not start"
        time.sleep(0.05)
    try:
        yield DemoServer(f"127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        gateway.stop()
