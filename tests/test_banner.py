"""The ready banner: the same lines from `make serve` (full URLs) and from the ingress (paths)."""

from __future__ import annotations

from serve_app.banner import http_base, ready_lines
from serve_app.config import AppConfig, ModelConfig
from serve_app.engine.spec import ModelSpec


def test_the_banner_names_every_model_the_demo_and_warns_about_random_weights() -> None:
    lines = ready_lines([AppConfig.embedded_default()], "http://127.0.0.1:8123")
    assert lines[0] == "  ws://127.0.0.1:8123/v1/realtime?model=moshi-sft"
    assert "  browser demo: http://127.0.0.1:8123/" in lines
    assert "RANDOM weights" in lines[-1] and "moshi-sft, moshi-base, moshi-pretrain" in lines[-1]


def test_real_weights_get_no_warning_and_paths_stand_alone() -> None:
    real = AppConfig(models=(ModelConfig(id="moshi", spec=ModelSpec(hf_repo="kyutai/moshiko-pytorch-bf16")),))
    lines = ready_lines([real])
    assert lines[0] == "  /v1/realtime?model=moshi"
    assert not any("RANDOM" in line for line in lines)


def test_the_ingress_banner_gets_urls_from_serves_http_options() -> None:
    # What `serve run` / `serve deploy` log: the controller's host, port and the app's route prefix.
    assert http_base("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert http_base("0.0.0.0", 8123, "/moshi/") == "http://127.0.0.1:8123/moshi"  # all interfaces: loopback
    assert http_base(None, 8000, "/") == "http://127.0.0.1:8000"
    lines = ready_lines([AppConfig.embedded_default()], http_base("::", 9000, "/rt"))
    assert lines[0] == "  ws://127.0.0.1:9000/rt/v1/realtime?model=moshi-sft"
