"""A call's peer connection (aiortc): the offer in, the answer out with every ICE candidate in it (the
HTTP exchange has no trickle ICE; aiortc gathers inside setLocalDescription), and the wiring of its data
channel and tracks to the call's channel."""

from __future__ import annotations

import asyncio
import logging

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidAccessError, InvalidStateError
from aiortc.mediastreams import MediaStreamTrack

from serve_app.webrtc.audio_in import TrackInput
from serve_app.webrtc.channel import CallChannel
from serve_app.webrtc.sdp_offer import OfferError

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0


class CallPeer:
    def __init__(self, channel: CallChannel, ice_servers: tuple[dict[str, str], ...]) -> None:
        # No ICE servers by default: aiortc's default STUN server would be looked up on every call (slow,
        # or a timeout offline); host candidates serve clients that can reach the replica.
        servers = [RTCIceServer(**s) for s in ice_servers]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self.channel = channel
        self.connected = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.pc.on("datachannel", channel.attach)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    async def answer(self, offer_sdp: str) -> str:
        """The SDP answer; OfferError (400) if aiortc cannot apply the offer."""
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            self.pc.addTrack(self.channel.track)
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except (ValueError, KeyError, IndexError, TypeError, InvalidAccessError, InvalidStateError) as exc:
            await self.close()
            detail = f"The SDP offer cannot be answered: {exc}"
            raise OfferError(400, "invalid_offer", detail, "sdp") from None
        description = self.pc.localDescription
        assert description is not None
        return description.sdp

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        try:
            await asyncio.wait_for(self.pc.close(), CLOSE_TIMEOUT_S)
        except Exception:
            logger.warning("closing a peer connection failed", exc_info=True)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio":
            return
        listener = TrackInput(self.channel.hear, self.channel.input_format)
        task = asyncio.create_task(listener.run(track))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        logger.info("call peer connection %s", state)
        if state == "connected":
            self.connected.set()
        elif state in ("failed", "closed"):
            await self.channel.close(1000)
