"""What a newly started service tells its operator: where to connect, and whether the models are real.

`python -m serve_app.run` prints it with full URLs once /healthz answers; the ingress logs it once every
deployment is running (so `serve run` / `serve deploy` show it too, with the URLs Serve's controller gives).
"""

from __future__ import annotations

from collections.abc import Iterable

from serve_app.config import AppConfig

RANDOM_WEIGHTS_NOTE = (
    "NOTE: {models} are embedded tiny checkpoints with RANDOM weights: they answer with noise. Point the "
    "config at kyutai/moshiko-pytorch-bf16 (or a local directory) on a GPU machine for the real model."
)


ANY_INTERFACE = ("0.0.0.0", "::", "")


def http_base(host: str | None, port: int, route_prefix: str = "/") -> str:
    """ "http://host:port/prefix" where a client on this machine connects (all interfaces: loopback)."""
    if not host or host in ANY_INTERFACE:
        host = "127.0.0.1"
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def ready_lines(configs: Iterable[AppConfig], base_url: str = "") -> list[str]:
    """The banner's lines: each model's realtime URL, the HTTP endpoints, the demo, the random-weights note.
    `base_url` ("http://host:port"; empty: paths only)."""
    configs = list(configs)
    ws = base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    lines = [f"  {ws}/v1/realtime?model={m.id}" for c in configs for m in c.models]
    lines.append(
        f"  models: {base_url}/v1/models   health: {base_url}/healthz   status: {base_url}/v1/status"
    )
    lines.append(f"  browser demo: {base_url}/")
    tiny = [m.id for c in configs for m in c.models if m.spec.tiny_seed is not None]
    if tiny:
        lines.append("  " + RANDOM_WEIGHTS_NOTE.format(models=", ".join(tiny)))
    return lines
