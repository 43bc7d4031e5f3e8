"""The OpenAI-compatible backend against a local HTTP server speaking the transcription endpoint (a paid
API is the one thing tests stand in for): what it sends, what it returns, how it fails."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import numpy as np
import pytest

from serve_app.asr.backend import TranscriptionFailed
from serve_app.asr.config import AsrBackendConfig, AsrConfig
from serve_app.asr.service import AsrService


class Recorder:
    requests: ClassVar[list[dict[str, Any]]] = []
    status = 200


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Recorder.requests.append(
            {
                "path": self.path,
                "auth": self.headers.get("Authorization"),
                "content_type": self.headers.get("Content-Type", ""),
                "body": body,
            }
        )
        answer = {"text": " the stub heard you "} if Recorder.status == 200 else {"error": {"message": "x"}}
        data = json.dumps(answer).encode()
        self.send_response(Recorder.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def service(base_url: str) -> AsrService:
    backend = AsrBackendConfig(
        id="gpt-4o-transcribe", kind="openai", base_url=base_url, api_key_env="TEST_ASR_KEY", timeout_s=5
    )
    return AsrService(AsrConfig(backends=(backend,), default="gpt-4o-transcribe"))


def test_a_turn_is_posted_as_a_wav_with_model_key_and_language_and_its_text_returned(
    api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_ASR_KEY", "sk-local")
    Recorder.requests.clear()
    Recorder.status = 200
    text = service(api).transcribe(np.zeros(24_000, np.float32), model="whisper-1", language="en")
    assert text == "the stub heard you"
    (request,) = Recorder.requests
    assert request["path"] == "/v1/audio/transcriptions"
    assert request["auth"] == "Bearer sk-local"
    assert request["content_type"].startswith("multipart/form-data")
    body = request["body"]
    assert b"RIFF" in body and b"WAVE" in body  # the turn, as a WAV file
    assert b'name="model"\r\n\r\ngpt-4o-transcribe' in body  # the backend's model, not the client's name
    assert b'name="language"\r\n\r\nen' in body


def test_a_failing_api_is_a_failed_transcription_with_its_reason(api: str) -> None:
    Recorder.status = 500
    with pytest.raises(TranscriptionFailed, match="answered 500"):
        service(api).transcribe(np.zeros(2400, np.float32))


def test_an_unreachable_api_is_a_failed_transcription() -> None:
    with pytest.raises(TranscriptionFailed, match=r"APIConnectionError|APITimeoutError"):
        service("http://127.0.0.1:9/v1").transcribe(np.zeros(2400, np.float32))
