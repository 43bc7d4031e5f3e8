"""An in-process server (uvicorn thread, no Ray) on the embedded tiny checkpoints, shared by the module."""

from __future__ import annotations

import contextlib
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
from serve_app.engine.startup import start_runner
from serve_app.server.app import build_realtime_app
from serve_app.server.local_gateway import LocalGateway, build_local_gateway
from serve_app.server.transcription import LocalTranscription
from serve_app.session.settings import SessionSettings
from tests.fixtures.net import free_port

BROKEN_ASR = "broken-asr"
STREAMING_ASR = "kyutai-stt-tiny"
"""A generated tiny Kyutai-STT-shaped checkpoint (random text) on 2 streaming slots."""


@dataclass
class RunningServer:
    host: str
    gateway: LocalGateway
    config: AppConfig

    @property
    def ws_base(self) -> str:
        return f"ws://{self.host}/v1"

    @property
    def http_base(self) -> str:
        return f"http://{self.host}"


@pytest.fixture(scope="session")
def local_server() -> Iterator[RunningServer]:
    # Client, server and engines share this process and its 2 cores: admission by tick time would
    # refuse at random here, and the 1 s lag limit once ended a CLI test's session on a loaded machine
    # (tests/ray and tests/engine cover both), so only the slot count admits and only 5 s of lag ends one.
    lenient = RealtimeLimits(admit_fraction=None, max_lag_ms=5000)
    config = AppConfig(
        models=(
            ModelConfig(id="moshi-sft", spec=ModelSpec(tiny_seed=1), slots=3, realtime=lenient),
            ModelConfig(id="moshi-base", spec=ModelSpec(tiny_seed=2), slots=2, realtime=lenient),
        ),
        session=SessionSettings(utterance_silence_ms=480),
        server={"api_keys": (), "max_loop_lag_ms": None},
        asr=AsrConfig(
            backends=(
                AsrBackendConfig(id="pocketsphinx", kind="pocketsphinx"),
                # An OpenAI-compatible API nobody answers: sessions naming it see `.failed`.
                AsrBackendConfig(
                    id=BROKEN_ASR, kind="openai", base_url="http://127.0.0.1:9/v1", timeout_s=2.0
                ),
                AsrBackendConfig(
                    id=STREAMING_ASR,
                    kind="kyutai",
                    spec=ModelSpec(tiny_seed=11, tiny_kind="stt"),
                    slots=2,
                    realtime=lenient,
                ),
            ),
            default="pocketsphinx",
        ),
    )
    with serve_in_process(config) as server:
        yield server


@contextlib.contextmanager
def serve_in_process(config: AppConfig) -> Iterator[RunningServer]:
    """The app on uvicorn in a thread of this process, with a local gateway (no Ray)."""
    gateway = build_local_gateway(config)
    streaming = config.asr.streaming_backend
    streaming_asr = None
    if streaming is not None:
        engine = streaming.engine_config()
        streaming_asr = LocalGateway({engine.id: start_runner(**engine.runner_options(), text_only=True)})
    port = free_port()
    app = build_realtime_app(
        gateway,
        config,
        transcription=LocalTranscription(AsrService(config.asr)),
        streaming_asr=streaming_asr,
    )
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
        yield RunningServer(f"127.0.0.1:{port}", gateway, config)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        gateway.stop()
        if streaming_asr is not None:
            streaming_asr.stop()
