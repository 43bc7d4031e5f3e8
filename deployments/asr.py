"""ASR deployment: input transcription, a Ray Serve deployment of its own.

CPU by default (pocketsphinx), GPU-capable through its `ray_actor_options`, scaled (replicas, autoscaling)
in the Serve YAML like the model deployments. Turn-by-turn backends: each `transcribe` call is one
committed turn, PCM16 bytes in, text out; a backend's failure comes back as its reason, so the session
sends `.failed` in words. `RayTranscription` is the ingress side of those (TranscriptionPort over a
deployment handle). The streaming backend (Kyutai STT) runs on engine slots in the same replica: a
session leases one through `session_stream`, exactly as it leases a Moshi slot from a model replica
(deployments/slot_host.py), and its audio and text ride the frame channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import numpy.typing as npt
from ray import serve
from ray.serve import Deployment
from ray.serve.handle import DeploymentHandle

from deployments.slot_host import SlotHost
from deployments.wire import Admission, LeaseEnd
from serve_app.asr.backend import TranscriptionFailed
from serve_app.asr.config import AsrConfig
from serve_app.asr.service import AsrService
from serve_app.protocol.codecs import float_to_pcm16, pcm16_from_bytes, pcm16_to_bytes, pcm16_to_float

logger = logging.getLogger("ray.serve")

ASR_DEPLOYMENT = "RealtimeAsr"
CALL_TIMEOUT_S = 60.0


STREAM_CALLS = 8
"""Turn-by-turn calls a replica takes beside its stream leases (`max_ongoing_requests` = slots + this)."""


class AsrReplica:
    async def __init__(self, config: dict[str, Any]) -> None:  # type: ignore[misc]
        asr = AsrConfig.model_validate(config)
        self._service = AsrService(asr)
        await asyncio.to_thread(self._service.warm_up)  # load the backends before Serve marks us running
        streaming = asr.streaming_backend
        self._streams: SlotHost | None = None
        if streaming is not None:
            self._streams = SlotHost(streaming.engine_config(), text_only=True)
            await self._streams.start()

    async def session_stream(self, session_id: str) -> AsyncIterator[Admission | LeaseEnd]:
        """A session's lease of a streaming-ASR slot (the same contract as a model replica's)."""
        if self._streams is None:
            raise RuntimeError("this ASR deployment has no streaming backend")
        async for item in self._streams.session_stream(session_id):
            yield item

    def check_health(self) -> None:
        if self._streams is not None:
            self._streams.check_health()

    def __del__(self) -> None:
        streams = getattr(self, "_streams", None)
        if streams is not None:
            streams.stop()

    async def transcribe(
        self, pcm16: bytes, model: str | None, language: str | None, prompt: str | None
    ) -> dict[str, str]:
        """{"text": ...} or {"error": reason}."""
        pcm = pcm16_to_float(pcm16_from_bytes(pcm16))
        try:
            text = await asyncio.to_thread(
                self._service.transcribe, pcm, model=model, language=language, prompt=prompt
            )
        except TranscriptionFailed as exc:
            return {"error": str(exc)}
        return {"text": text}


class RayTranscription:
    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self._handle = handle

    async def transcribe(
        self, pcm: npt.NDArray[np.float32], *, model: str | None, language: str | None, prompt: str | None
    ) -> str:
        pcm16 = pcm16_to_bytes(float_to_pcm16(pcm))
        try:
            answer: dict[str, str] = await asyncio.wait_for(
                self._handle.transcribe.remote(pcm16, model, language, prompt), CALL_TIMEOUT_S
            )
        except TimeoutError as exc:
            raise TranscriptionFailed(
                f"the ASR deployment did not answer within {CALL_TIMEOUT_S:g} s"
            ) from exc
        except Exception as exc:  # a dead or unreachable replica: the turn fails, the session goes on
            logger.warning("ASR call failed: %s", exc)
            raise TranscriptionFailed(f"the ASR deployment failed: {type(exc).__name__}") from exc
        if "error" in answer:
            raise TranscriptionFailed(answer["error"])
        return answer["text"]


AsrDeployment: Deployment = serve.deployment(
    name=ASR_DEPLOYMENT,
    ray_actor_options={"num_cpus": 0.25, "num_gpus": 0},
    max_ongoing_requests=8,
)(AsrReplica)
