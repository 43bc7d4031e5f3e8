"""One local Ray cluster + Serve for the whole Ray suite, deployed from a Serve config like configs/*.yaml.

moshi-sft autoscales 1 → 2 replicas of 2 slots (so a second session triggers an upscale and a fifth finds
everything full, later a config update lets it downscale); moshi-base runs 2 fixed replicas (one is killed
in a test). Tiny checkpoints, no GPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ServeDeploySchema

from serve_app.ray_env import apply_ray_environment
from serve_app.run import deploy, wait_healthy
from tests.fixtures.net import free_port

APP = "realtime-test"
SLOTS = 2
SLOW = "moshi-slow"
STREAMING_ASR = "kyutai-stt-tiny"
"""The ASR deployment's streaming backend: a generated tiny Kyutai-STT-shaped checkpoint, 2 slots."""
MAX_MESSAGE_BYTES = 65_536
"""Low enough that fuzzing can send oversized messages cheaply, above any append the suite sends (≤ 32 kB)."""

# Autoscaling reacts in about a second instead of tens (pushed to every Ray worker via the raylet env).
os.environ.setdefault("RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")
# What `make serve` runs: HAProxy in front of the ingress replicas (on free ports, so a server running
# beside the suite is unaffected), with a short direct-ingress drain so teardown and rescaling are fast.
apply_ray_environment("haproxy")
os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")


SFT_AUTOSCALING = {
    "min_replicas": 1,
    "initial_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 1,
    "upscale_delay_s": 0,
    "downscale_delay_s": 600,
    "metrics_interval_s": 0.5,
    "look_back_period_s": 1.0,
}


def serve_config(http_port: int, moshi_sft: dict[str, Any] | None = None) -> dict[str, Any]:
    """The suite's Serve config; `moshi_sft` replaces that deployment's knobs (a `serve deploy` update)."""
    small = {"num_cpus": 0.25, "num_gpus": 0}
    return {
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "logging_config": {"encoding": "JSON", "enable_access_log": False},
        "applications": [
            {
                "name": APP,
                "route_prefix": "/",
                "import_path": "deployments.app:build_app",
                "args": {
                    "models": [
                        # The move tests (a drain on moshi-sft, a kill on moshi-base) need the survivor to
                        # take the moved sessions: on 2 shared cores a replica's ticks can pass the tick
                        # budget with one session, and a resume is judged like a new session (refused until
                        # its catch-up fits), so these two admit on free slots alone. Admission by tick
                        # budget, new and resumed, is tested on moshi-slow, in tests/transport/
                        # test_session_move.py and in tests/engine.
                        {
                            "id": "moshi-sft",
                            "spec": {"tiny_seed": 1},
                            "slots": SLOTS,
                            "realtime": {"admit_fraction": None},
                        },
                        {
                            "id": "moshi-base",
                            "spec": {"tiny_seed": 2},
                            "slots": SLOTS,
                            "realtime": {"admit_fraction": None},
                        },
                        # Its 16-slot tick (≈ 45 ms on 2 cores) is slow for its budget (0.4 × 80 ms):
                        # one session is served in real time, a second one is refused.
                        {
                            "id": SLOW,
                            "spec": {"tiny_seed": 3},
                            "slots": 16,
                            "realtime": {"admit_fraction": 0.4},
                        },
                    ],
                    "session": {"utterance_silence_ms": 480, "max_message_bytes": MAX_MESSAGE_BYTES},
                    "asr": {
                        "backends": [
                            {"id": "pocketsphinx", "kind": "pocketsphinx"},
                            {
                                "id": STREAMING_ASR,
                                "kind": "kyutai",
                                "spec": {"tiny_seed": 11, "tiny_kind": "stt"},
                                "slots": 2,
                            },
                        ],
                        "default": "pocketsphinx",
                    },
                },
                "deployments": [
                    {"name": "RealtimeIngress", "ray_actor_options": {"num_cpus": 0.25}},
                    {
                        "name": "moshi-sft",
                        "ray_actor_options": small,
                        **(moshi_sft or {"autoscaling_config": SFT_AUTOSCALING}),
                    },
                    {"name": "moshi-base", "num_replicas": 2, "ray_actor_options": small},
                    {"name": SLOW, "num_replicas": 1, "ray_actor_options": small},
                ],
            }
        ],
    }


@dataclass
class Cluster:
    http_port: int
    metrics_port: int

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/v1"

    def ingress(self) -> DeploymentHandle[Any]:
        return serve.get_deployment_handle("RealtimeIngress", APP)

    def session_replicas(self) -> dict[str, dict[str, int]]:
        """Ingress ledger: session id → {replica id: frames that replica served}."""
        result: dict[str, dict[str, int]] = self.ingress().session_replicas.remote().result(timeout_s=10)
        return result

    def session_moves(self) -> dict[str, list[dict[str, Any]]]:
        """Ingress ledger: session id → its moves between replicas (why, from, to, gap_s)."""
        result: dict[str, list[dict[str, Any]]] = self.ingress().session_moves.remote().result(timeout_s=10)
        return result

    def replicas(self, deployment: str, state: str = "RUNNING") -> int:
        app = serve.status().applications[APP]
        states = app.deployments[deployment].replica_states
        return sum(count for name, count in states.items() if name == state)

    def running_replicas(self, deployment: str) -> int:
        return self.replicas(deployment, "RUNNING")

    def wait_replicas(self, deployment: str, count: int, timeout_s: float, state: str = "RUNNING") -> None:
        deadline = time.monotonic() + timeout_s
        while self.replicas(deployment, state) != count:
            assert time.monotonic() < deadline, f"{deployment} did not reach {count} {state} replicas"
            time.sleep(0.25)

    def wait_running(self, deployment: str, count: int, timeout_s: float) -> None:
        self.wait_replicas(deployment, count, timeout_s)

    def redeploy(self, moshi_sft: dict[str, Any]) -> None:
        """Apply a changed config to the live app, as `serve deploy` would."""
        deploy(ServeDeploySchema.model_validate(serve_config(self.http_port, moshi_sft)))


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    http_port, metrics_port = free_port(), free_port()
    for name in (
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
        "RAY_SERVE_HAPROXY_STATS_PORT",
        "RAY_SERVE_HAPROXY_METRICS_PORT",
    ):
        os.environ.setdefault(name, str(free_port()))
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        namespace="serve",
        _metrics_export_port=metrics_port,
        log_to_driver=False,
    )
    try:
        schema = ServeDeploySchema.model_validate(serve_config(http_port))
        deploy(schema)
        assert wait_healthy(schema, timeout_s=180), "the Serve app did not become healthy"
        yield Cluster(http_port, metrics_port)
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
