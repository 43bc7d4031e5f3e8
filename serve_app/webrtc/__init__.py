"""WebRTC calls (`POST /v1/realtime/calls`): the same session core as a realtime WebSocket, with Opus audio
on a media track and the JSON events on the `oai-events` data channel (docs/ARCHITECTURE.md, "WebRTC
calls")."""
