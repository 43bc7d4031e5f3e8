"""Application wiring: Serve YAML `args` → AppConfig → one model deployment per model type, the ASR
deployment and the ingress.

`serve run deployments.app:app` runs the embedded default (tiny random-weight checkpoints);
`serve run configs/local.yaml` (or `python -m serve_app.run`) passes `args` to `build_app`.
Deployment knobs (replicas, autoscaling, num_gpus, graceful shutdown) come from the Serve YAML, which
overrides the defaults set here.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.asr import STREAM_CALLS, AsrDeployment
from deployments.ingress import IngressDeployment
from deployments.model import ModelDeployment
from serve_app.config import load_config


def build_app(args: dict[str, Any]) -> Application:
    config = load_config(args)
    models = {
        # One ongoing request per session: a replica takes no more sessions than it has slots.
        model.id: ModelDeployment.options(name=model.id, max_ongoing_requests=model.max_sessions).bind(
            model.model_dump(mode="json")
        )
        for model in config.models
    }
    streaming = config.asr.streaming_backend
    # A streaming ASR session holds one ongoing request (its lease) for its life; turn calls need room too.
    asr_requests = STREAM_CALLS + (streaming.engine_config().max_sessions if streaming else 0)
    asr = AsrDeployment.options(max_ongoing_requests=asr_requests).bind(config.asr.model_dump(mode="json"))
    return IngressDeployment.bind(config.model_dump(mode="json"), models, asr)


app = build_app({})
