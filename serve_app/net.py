"""A free loopback port for a server a benchmark or a test starts beside Ray."""

from __future__ import annotations

import random
import socket

PORT_RANGE = (20_000, 29_999)
"""Below the kernel's ephemeral range (32768-60999 here), where Ray picks its own random ports (a GCS once
took the port a test had just chosen for Serve's proxy: binding port 0 hands out exactly those), and below
the 30000-31000 Serve's direct ingress uses."""


_handed_out: set[int] = set()
"""Never the same port twice in one process: callers often take several before binding any."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, outside the range others pick at random."""
    for _ in range(200):
        port = random.randint(*PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")
