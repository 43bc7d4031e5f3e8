"""The data plane between ingress and model replicas (no Ray here).

One connection per (ingress replica, model replica) pair carries every session of the pair: input audio
coalesced per event-loop turn, and each tick's output frames for all of the pair's sessions in one
message, as packed binary arrays. Ray Serve keeps the control plane (one lease call per session).
"""
