"""An in-process server (real uvicorn, LocalGateway) with API keys and a short ICE connect timeout."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from serve_app.config import AppConfig, ModelConfig, RealtimeLimits
from serve_app.engine.spec import ModelSpec
from serve_app.session.settings import SessionSettings
from tests.server.conftest import RunningServer, serve_in_process

API_KEY = "sk-webrtc-test"
CONNECT_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def rtc_server() -> Iterator[RunningServer]:
    lenient = RealtimeLimits(admit_fraction=None, max_lag_ms=5000)
    config = AppConfig(
        models=(ModelConfig(id="moshi-sft", spec=ModelSpec(tiny_seed=1), slots=2, realtime=lenient),),
        session=SessionSettings(utterance_silence_ms=480),
        server={
            "api_keys": (API_KEY,),
            "max_loop_lag_ms": None,
            "max_vad_lag_ms": None,
            "webrtc_connect_timeout_s": CONNECT_TIMEOUT_S,
        },
    )
    with serve_in_process(config) as server:
        yield server
