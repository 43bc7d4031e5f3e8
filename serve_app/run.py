"""`python -m serve_app.run --config configs/local.yaml --host 127.0.0.1 --port 8000`.

Starts a local Ray instance (or joins one with --address), deploys the Serve YAML with its http_options
host/port replaced, waits until /healthz answers 200, prints where to connect, and serves until SIGINT or
SIGTERM, then shuts Serve and Ray down.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import serve
from ray.serve._private import api as serve_api
from ray.serve.schema import ServeDeploySchema

from serve_app.banner import ready_lines
from serve_app.config import AppConfig
from serve_app.ray_env import FRONTS, apply_ray_environment

logger = logging.getLogger("serve_app.run")

APP_IMPORT_PATHS = ("deployments.app:build_app", "deployments.app:app")

PROGRESS_EVERY_S = 5.0


def load_deploy_config(path: Path, host: str | None = None, port: int | None = None) -> ServeDeploySchema:
    raw: dict[str, Any] = yaml.safe_load(path.read_text())
    http = dict(raw.get("http_options") or {})
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = port
    raw["http_options"] = http
    return ServeDeploySchema.model_validate(raw)


def app_configs(schema: ServeDeploySchema) -> list[AppConfig]:
    """The AppConfig each of our applications will build (validates `args` before deploying)."""
    from serve_app.config import load_config

    return [
        load_config(dict(app.args or {}))
        for app in schema.applications
        if app.import_path in APP_IMPORT_PATHS
    ]


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def exposure_warning(schema: ServeDeploySchema, configs: list[AppConfig]) -> str | None:
    """A loud sentence when the server listens beyond loopback and a socket needs no API key."""
    host = schema.http_options.host if schema.http_options else None
    if host in LOOPBACK or all(c.server.effective_api_keys() for c in configs):
        return None
    return (
        f"the realtime endpoint listens on {host or 'every interface'} WITHOUT API keys: anyone who can "
        "reach it can use the models. Set server.api_keys or REALTIME_API_KEYS, or bind 127.0.0.1 "
        "(docs/SECURITY.md)."
    )


SERVE_DEFAULT_GRACEFUL_SHUTDOWN_S = 20.0
"""Serve's `graceful_shutdown_timeout_s` for a deployment that sets none."""
SHUTDOWN_MARGIN_S = 10.0
"""What the controller may take beyond the longest graceful shutdown (replica stops, HAProxy, itself)."""


def session_grace_s(schema: ServeDeploySchema) -> float:
    """The longest Serve lets open requests (here: sessions) finish when it stops a replica: the largest
    `graceful_shutdown_timeout_s` in the config. With no session open, replicas stop at once."""
    values = [
        float(d.graceful_shutdown_timeout_s)
        if isinstance(d.graceful_shutdown_timeout_s, int | float)
        else SERVE_DEFAULT_GRACEFUL_SHUTDOWN_S
        for app in schema.applications
        for d in app.deployments
    ]
    return max(values, default=SERVE_DEFAULT_GRACEFUL_SHUTDOWN_S)


def shutdown_notice(schema: ServeDeploySchema) -> str:
    """What the console says the moment it is asked to stop (Serve itself prints nothing while it waits)."""
    return (
        f"shutting down: waiting up to {session_grace_s(schema):.0f} s for open sessions to end "
        "(graceful_shutdown_timeout_s); with none open, a few seconds"
    )


def loopback_note(schema: ServeDeploySchema, front: str) -> str | None:
    """Serve's controller warns at every HAProxy-mode start whose host is not 0.0.0.0, for a cluster's sake;
    on one machine serving loopback on purpose it is expected, and the console says so."""
    host = schema.http_options.host if schema.http_options else None
    if front != "haproxy" or host not in LOOPBACK:
        return None
    return (
        f"  (Ray's warning \"HTTPOptions.host={host!r} won't accept connections from HAProxy on other "
        'nodes" is expected: this is one machine, serving loopback on purpose.)'
    )


def deploy(schema: ServeDeploySchema) -> Any:
    """Start Serve on the connected Ray instance and submit the config, as `serve run <yaml>` does;
    returns Serve's client (its `shutdown` takes a timeout, `serve.shutdown` does not)."""
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        grpc_options=schema.grpc_options.model_dump(),
        proxy_location=schema.proxy_location,
        controller_options=schema.controller_options,
    )
    client.deploy_apps(schema, _blocking=False)
    return client


def shut_down(client: Any, schema: ServeDeploySchema) -> None:
    """Stop Serve, waiting as long as its deployments may take: `serve.shutdown` gives up after a fixed
    30 s and logs "Controller failed to shut down" while the replicas are still finishing sessions."""
    if client is not None:
        client.shutdown(timeout_s=session_grace_s(schema) + SHUTDOWN_MARGIN_S)
    serve.shutdown()  # type: ignore[no-untyped-call]  # forgets the client (a no-op stop when stopped)


def base_url(schema: ServeDeploySchema) -> str:
    host = schema.http_options.host or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{schema.http_options.port}"


def _healthz_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _failed_apps() -> dict[str, str]:
    apps = serve.status().applications
    return {name: app.message for name, app in apps.items() if app.status == "DEPLOY_FAILED"}


def _starting() -> str:
    """The deployments still without all their replicas running, e.g. "moshi-sft 0/1"."""
    waiting = []
    for app in serve.status().applications.values():
        for name, deployment in app.deployments.items():
            states = deployment.replica_states.items()
            running = sum(count for state, count in states if state == "RUNNING")
            total = sum(count for _, count in states)
            if running < max(total, 1):
                waiting.append(f"{name} {running}/{total}")
    return ", ".join(waiting)


def wait_healthy(
    schema: ServeDeploySchema,
    timeout_s: float,
    stop: threading.Event | None = None,
    report: Callable[[str], None] | None = None,
) -> bool:
    """Poll every application's /healthz until all answer 200; raise if a deployment failed. `report`
    gets a progress line every PROGRESS_EVERY_S (loading, generating and warming up take a while)."""
    urls = [
        base_url(schema) + (app.route_prefix or "/").rstrip("/") + "/healthz" for app in schema.applications
    ]
    started = time.monotonic()
    deadline, next_report = started + timeout_s, started + PROGRESS_EVERY_S
    while time.monotonic() < deadline and not (stop and stop.is_set()):
        if all(_healthz_ok(url) for url in urls):
            return True
        failed = _failed_apps()
        if failed:
            raise RuntimeError(f"deployment failed: {failed}")
        if report is not None and time.monotonic() >= next_report:
            next_report += PROGRESS_EVERY_S
            waiting = _starting() or "the HTTP front"
            report(
                f"  … {time.monotonic() - started:.0f} s: waiting for {waiting} (loading checkpoints, "
                "generating tiny ones on first use, warming up)"
            )
        time.sleep(0.5)
    return False


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serve_app.run", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/local.yaml"), help="Serve YAML")
    parser.add_argument("--host", default=None, help="override http_options.host")
    parser.add_argument("--port", type=int, default=None, help="override http_options.port")
    parser.add_argument("--address", default=None, help="join this Ray cluster instead of starting one")
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus export port (local Ray)")
    parser.add_argument(
        "--dashboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start the Ray dashboard with a local Ray (default: on; --no-dashboard saves its memory and "
        "start-up work)",
    )
    parser.add_argument(
        "--dashboard-port",
        type=int,
        default=None,
        help="Ray dashboard port (local Ray; default 8265, or a free one when that is taken)",
    )
    parser.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for /healthz")
    parser.add_argument(
        "--front",
        choices=FRONTS,
        default="haproxy",
        help="HTTP front of a local Ray: HAProxy tunnelling to the ingress replicas (default) or Serve's "
        "Python proxy; a joined cluster (--address) keeps the front it was started with",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    schema = load_deploy_config(args.config, args.host, args.port)
    configs = app_configs(schema)
    if warning := exposure_warning(schema, configs):
        logger.warning("SECURITY: %s", warning)

    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            print(f"received {name} again: still shutting down, see above", flush=True)
            return
        print(f"received {name}; {shutdown_notice(schema)}", flush=True)
        stop.set()

    init_kwargs: dict[str, Any] = {"namespace": "serve"}
    if args.address:
        init_kwargs["address"] = args.address
    else:
        apply_ray_environment(args.front)
        init_kwargs["include_dashboard"] = args.dashboard
        if args.dashboard:
            init_kwargs["dashboard_host"] = "127.0.0.1"
            if args.dashboard_port is not None:  # unset, Ray moves off a taken 8265 by itself
                init_kwargs["dashboard_port"] = args.dashboard_port
        if args.metrics_port is not None:
            init_kwargs["_metrics_export_port"] = args.metrics_port
    context = ray.init(**init_kwargs)
    # After ray.init, which installs its own SIGTERM handler (sys.exit) on the driver.
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    code = 0
    client: Any = None
    try:
        client = deploy(schema)
        started = time.monotonic()
        print(
            f"Deploying {args.config}: progress every {PROGRESS_EVERY_S:g} s until /healthz answers.",
            flush=True,
        )
        if not args.address and (note := loopback_note(schema, args.front)):
            print(note, flush=True)
        if not wait_healthy(schema, args.ready_timeout, stop, report=lambda line: print(line, flush=True)):
            if not stop.is_set():
                logger.error("not healthy after %.0f s", args.ready_timeout)
                code = 1
            return code
        url = base_url(schema)
        lines = ready_lines(configs, url)
        print(f"\nMoshi realtime is up after {time.monotonic() - started:.1f} s:", flush=True)
        for line in lines:
            print(line, flush=True)
        if context.dashboard_url:
            print(f"  Ray dashboard: http://{context.dashboard_url} (Serve tab: the application)", flush=True)
        metrics_port = getattr(context, "address_info", {}).get("metrics_export_port")  # local Ray only
        if metrics_port:
            print(
                f"  Prometheus metrics (moshi_realtime_*): http://127.0.0.1:{metrics_port}/metrics; "
                "Grafana panels: docs/grafana/moshi-realtime.json",
                flush=True,
            )
        print("Press Ctrl-C to stop.", flush=True)
        while not stop.wait(1.0):
            pass
    except Exception:
        logger.exception("serving failed")
        code = 1
    finally:
        shut_down(client, schema)
        ray.shutdown()
        print("stopped.", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
