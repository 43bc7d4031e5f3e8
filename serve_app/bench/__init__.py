"""Benchmark programs (they print numbers and write JSON + plots; they are not tests).

They run offline on the tiny checkpoints and start Ray themselves, so the package sets these defaults
before any of its modules imports moshi (through serve_app.engine) or starts Ray; the environment wins.
"""

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
