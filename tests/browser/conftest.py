"""An in-process server (uvicorn thread, no Ray) for tests/browser: one tiny model, an API key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from serve_app.asr.config import AsrBackendConfig, AsrConfig
from serve_app.config import AppConfig, ModelConfig, RealtimeLimits
from serve_app.engine.spec import ModelSpec
from serve_app.session.settings import SessionSettings
from tests.server.conftest import RunningServer, serve_in_process

API_KEY = "browser-demo-key"


@pytest.fixture(scope="module")
def demo_server() -> Iterator[RunningServer]:
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
    with serve_in_process(config) as server:  # the app serves the demo at / itself
        yield server
