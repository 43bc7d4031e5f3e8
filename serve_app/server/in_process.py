"""The realtime app served from this process: uvicorn on a thread, a local gateway (no Ray), the ASR on a
thread. What the tests and the in-process benchmarks run; `make serve` runs the Ray app instead."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from serve_app.asr.service import AsrService
from serve_app.config import AppConfig
from serve_app.engine.startup import start_runner
from serve_app.net import free_port
from serve_app.server.app import build_realtime_app
from serve_app.server.local_gateway import LocalGateway, build_local_gateway
from serve_app.server.transcription import LocalTranscription

START_TIMEOUT_S = 60


@dataclass
class RunningServer:
    host: str
    gateway: LocalGateway
    config: AppConfig
    thread_id: int
    """The server thread's id (its event loop's CPU clock: time.pthread_getcpuclockid)."""

    @property
    def ws_base(self) -> str:
        return f"ws://{self.host}/v1"

    @property
    def http_base(self) -> str:
        return f"http://{self.host}"

    def loop_cpu_s(self) -> float:
        """CPU seconds the server's event loop thread has used."""
        return time.clock_gettime(time.pthread_getcpuclockid(self.thread_id))


@contextlib.contextmanager
def serve_in_process(config: AppConfig) -> Iterator[RunningServer]:
    """The app on 127.0.0.1 (a free port) until the block ends; config.asr's streaming backend, if any, on
    its own local gateway."""
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
    thread = threading.Thread(target=server.run, name="in-process-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.05)
        assert thread.ident is not None
        yield RunningServer(f"127.0.0.1:{port}", gateway, config, thread.ident)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        gateway.stop()
        if streaming_asr is not None:
            streaming_asr.stop()
