"""A WebRTC test client on aiortc, as a browser or agents-js would connect: an Opus track fed from the
committed speech fixture (then silence, as a live microphone), an `oai-events` data channel, and the SDP
exchange with `POST /v1/realtime/calls` in one of its three body shapes."""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import av
import httpx
import numpy as np
import numpy.typing as npt
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from serve_app.constants import SAMPLE_RATE
from serve_app.webrtc.audio_in import audio_frames
from tests.fixtures.speech import sentences_pcm16

FRAME_SAMPLES = SAMPLE_RATE // 50  # 20 ms

Shape = Literal["sdp", "multipart", "json"]


class SpeechTrack(MediaStreamTrack):
    """The fixture's sentences at real time, then silence (a microphone never stops sending)."""

    kind = "audio"

    def __init__(self, pcm16: bytes | None = None) -> None:
        super().__init__()
        self._pcm = np.frombuffer(sentences_pcm16() if pcm16 is None else pcm16, dtype="<i2")
        self._offset = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._offset / SAMPLE_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk = np.zeros(FRAME_SAMPLES, np.int16)
        part = self._pcm[self._offset : self._offset + FRAME_SAMPLES]
        chunk[: len(part)] = part
        frame = av.AudioFrame.from_ndarray(chunk[np.newaxis, :], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._offset
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._offset += FRAME_SAMPLES
        return frame


@dataclass
class RtcClient:
    pc: RTCPeerConnection
    channel: RTCDataChannel
    events: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    log: list[dict[str, Any]] = field(default_factory=list)
    audio: list[npt.NDArray[np.int16]] = field(default_factory=list)
    """Every frame received on the remote track (mono int16)."""
    call_id: str = ""
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def new(cls) -> RtcClient:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTrack(SpeechTrack())
        client = cls(pc, pc.createDataChannel("oai-events"))
        client.channel.on("message", client._on_message)
        pc.on("track", client._on_track)
        return client

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        assert self.pc.localDescription is not None
        return self.pc.localDescription.sdp

    async def post(
        self,
        http: httpx.AsyncClient,
        *,
        key: str | None = None,
        shape: Shape = "sdp",
        session: dict[str, Any] | None = None,
        model: str | None = None,
    ) -> httpx.Response:
        """POST the offer; on 201 apply the answer and remember the call id."""
        sdp = await self.offer()
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        params = {} if model is None else {"model": model}
        if shape == "sdp":
            headers["Content-Type"] = "application/sdp"
            response = await http.post("/v1/realtime/calls", content=sdp, headers=headers, params=params)
        elif shape == "multipart":
            files: dict[str, Any] = {"sdp": (None, sdp, "application/sdp")}
            if session is not None:
                files["session"] = (None, json.dumps(session), "application/json")
            response = await http.post("/v1/realtime/calls", files=files, headers=headers, params=params)
        else:
            body = {"sdp": sdp, **({} if session is None else {"session": session})}
            response = await http.post("/v1/realtime/calls", json=body, headers=headers, params=params)
        if response.status_code == 201:
            self.call_id = response.headers["location"].rsplit("/", 1)[-1]
            await self.pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
        return response

    async def next_event(self, kind: str | tuple[str, ...], timeout: float = 15) -> dict[str, Any]:
        kinds = (kind,) if isinstance(kind, str) else kind
        async with asyncio.timeout(timeout):
            while True:
                event = await self.events.get()
                if event["type"] in kinds:
                    return event

    async def seen(self, kind: str, timeout: float = 15, **fields: Any) -> dict[str, Any]:
        """The first event of `kind` with `fields` received so far or within `timeout` (any order)."""
        async with asyncio.timeout(timeout):
            while True:
                for event in self.log:
                    if event["type"] == kind and all(event.get(k) == v for k, v in fields.items()):
                        return event
                await asyncio.sleep(0.02)

    def send(self, event: dict[str, Any]) -> None:
        self.channel.send(json.dumps(event))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()

    def _on_message(self, message: str | bytes) -> None:
        event = json.loads(message)
        self.log.append(event)
        self.events.put_nowait(event)

    def _on_track(self, track: MediaStreamTrack) -> None:
        async def collect() -> None:
            async for frame in audio_frames(track):
                samples = frame.to_ndarray().reshape(-1)[:: len(frame.layout.channels)]
                self.audio.append(samples.astype(np.int16))

        self._tasks.append(asyncio.create_task(collect()))
