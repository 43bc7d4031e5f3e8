"""`python -m serve_app.ray_env`: what `serve run` / `ray start` need before Ray starts, as shell exports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from serve_app.ray_env import SINGLE_NODE_ENVIRONMENT, ray_environment


def _env_after_eval(*args: str) -> dict[str, str]:
    command = f'eval "$({sys.executable} -m serve_app.ray_env {" ".join(args)})" && env -0'
    out = subprocess.run(
        ["bash", "-c", command], capture_output=True, check=True, env={"PATH": "/usr/bin:/bin"}
    )
    return dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)


@pytest.mark.parametrize("front", ["haproxy", "proxy"])
def test_a_shell_that_evaluates_it_has_the_environment_make_serve_gives_ray(front: str) -> None:
    env = _env_after_eval("--front", front)
    expected = ray_environment(front)
    assert {name: env.get(name) for name in expected} == expected
    assert env["RAY_AUTH_MODE"] == "disabled"  # as the Makefile, for one machine


def test_a_cluster_asks_for_token_authentication() -> None:
    assert _env_after_eval("--auth", "token")["RAY_AUTH_MODE"] == "token"


def test_one_machine_drains_in_a_second_and_keeps_the_frame_channel_on_loopback() -> None:
    # Serve's 30 s direct-ingress drain made every Ctrl-C wait 30 s and end in "Controller failed to shut
    # down"; a cluster keeps it for its load balancers, and its frame channel on the node's address.
    one_machine = _env_after_eval()
    assert one_machine["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "1"
    assert one_machine["MOSHI_REALTIME_CHANNEL_HOST"] == "127.0.0.1"
    cluster = _env_after_eval("--auth", "token")
    assert not set(SINGLE_NODE_ENVIRONMENT) & set(cluster)


def test_an_unknown_front_is_refused_by_name() -> None:
    out = subprocess.run([sys.executable, "-m", "serve_app.ray_env", "--front", "nginx"], capture_output=True)
    assert out.returncode == 2 and b"invalid choice: 'nginx'" in out.stderr
