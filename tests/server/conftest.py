"""An in-process server (serve_app/server/in_process.py: uvicorn thread, no Ray) on the embedded tiny
checkpoints, shared by the session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from serve_app.asr.config import AsrBackendConfig, AsrConfig
from serve_app.config import AppConfig, ModelConfig, RealtimeLimits
from serve_app.engine.spec import ModelSpec
from serve_app.server.in_process import RunningServer, serve_in_process
from serve_app.server.local_gateway import LocalSlotStream
from serve_app.session.settings import SessionSettings

__all__ = ["RunningServer", "serve_in_process"]

BROKEN_ASR = "broken-asr"
STREAMING_ASR = "kyutai-stt-tiny"
"""A generated tiny Kyutai-STT-shaped checkpoint (random text) on 2 streaming slots."""


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


@pytest.fixture
def slot_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """What the app hands the slots (the local gateway's streams), in order: (method, *args); send_audio
    without its PCM."""
    calls: list[tuple[Any, ...]] = []
    for name in ("set_persona", "say", "stop_saying", "send_audio"):
        original = getattr(LocalSlotStream, name)

        async def record(
            self: LocalSlotStream, *args: Any, _name: str = name, _original: Any = original
        ) -> None:
            calls.append((_name,) if _name == "send_audio" else (_name, *args))
            await _original(self, *args)

        monkeypatch.setattr(LocalSlotStream, name, record)
    return calls
