"""The shipped configs load: Serve YAMLs through Serve's own schema, cluster.yaml through Ray's validator."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

from deployments.metrics import PREFIX
from serve_app.config import EMBEDDED_MODELS, EMBEDDED_PERSONA_MODEL, load_config, model_traits
from serve_app.engine.voice_names import PERSONAPLEX_VOICES, TINY_VOICE_FRAMES
from serve_app.run import app_configs, exposure_warning, load_deploy_config
from tests.fixtures.grafana import load_dashboard

ROOT = Path(__file__).resolve().parents[2]


def _deployments(schema: ServeDeploySchema) -> dict[str, Any]:
    (app,) = schema.applications
    return {d.name: d for d in app.deployments}


@pytest.mark.parametrize("name", ["local.yaml", "production.yaml"])
def test_serve_yaml_parses_and_builds_one_deployment_per_model(name: str) -> None:
    schema = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "configs" / name).read_text()))
    (config,) = app_configs(schema)
    deployments = _deployments(schema)
    assert set(deployments) == {m.id for m in config.models} | {"RealtimeIngress", "RealtimeAsr"}
    assert config.asr.backend_for(None).kind == "pocketsphinx"  # offline ASR unless configured otherwise
    assert schema.http_options.request_timeout_s is None  # it would cut live WebSockets
    for model in config.models:
        # max_ongoing_requests is derived from slots; a YAML value would break admission = free slot.
        assert "max_ongoing_requests" not in deployments[model.id].model_fields_set


def test_local_yaml_is_the_embedded_default_on_cpu() -> None:
    schema = load_deploy_config(ROOT / "configs" / "local.yaml", host="127.0.0.1", port=8123)
    assert (schema.http_options.host, schema.http_options.port) == ("127.0.0.1", 8123)
    (config,) = app_configs(schema)
    assert {m.id: m.spec.tiny_seed for m in config.models} == EMBEDDED_MODELS
    for model in config.models:
        assert _deployments(schema)[model.id].ray_actor_options.num_gpus == 0
        if model.id == EMBEDDED_PERSONA_MODEL:
            continue
        # Sized at load to the replica's share of the CPU, so a small machine holds what it can serve.
        assert (model.slots, model.max_slots) == ("auto", 4)
    # The persona-capable model: tiny PersonaPlex, a fixed few slots, booking no CPU beyond the 2.0 the
    # others book (Ray counts a 2-core machine's CPUs as 2.0).
    persona = config.model(EMBEDDED_PERSONA_MODEL)
    assert persona is not None and persona.spec.tiny_kind == "personaplex" and persona.slots == 2
    booked = sum(d.ray_actor_options.num_cpus for d in _deployments(schema).values())
    assert booked <= 2.0
    traits = model_traits(persona)
    assert traits.follows_instructions and traits.voices == tuple(TINY_VOICE_FRAMES)
    assert traits.default_voice == "NATF0"  # no NATF2 among the tiny voices: the first by name
    assert all(not model_traits(m).voices for m in config.models if m.id != EMBEDDED_PERSONA_MODEL)
    # `serve run configs/local.yaml` gets what `make serve` exports, from the file itself.
    env = schema.applications[0].runtime_env["env_vars"]
    assert env == {"HF_HUB_OFFLINE": "1"}
    streaming = config.asr.streaming_backend  # streaming transcription runs offline too (tiny STT)
    assert streaming is not None and streaming.spec is not None and streaming.spec.tiny_kind == "stt"


def test_production_yaml_uses_gpus_real_checkpoints_and_autoscaling() -> None:
    schema = load_deploy_config(ROOT / "configs" / "production.yaml")
    (config,) = app_configs(schema)
    assert config.model("moshi-sft") is not None
    persona = config.model("personaplex")
    assert persona is not None and persona.spec.hf_repo == "nvidia/personaplex-7b-v1"
    traits = model_traits(persona)
    assert traits.voices == PERSONAPLEX_VOICES and len(traits.voices) == 18
    assert traits.default_voice == "NATF2" and traits.follows_instructions
    assert traits.default_instructions and traits.default_instructions.startswith("You are")
    for model in config.models:
        assert model.spec.hf_repo is not None
        assert model.spec.hf_repo.startswith("kyutai/") or model is persona
        dep = _deployments(schema)[model.id]
        assert dep.ray_actor_options.num_gpus == 1
        auto = dep.autoscaling_config
        assert auto["max_replicas"] > auto["min_replicas"]
        # Upscale must start before a replica is full; with `slots: auto` a replica holds at most max_slots.
        slots = model.max_slots if model.slots == "auto" else model.slots
        assert auto["target_ongoing_requests"] < slots
        assert dep.graceful_shutdown_timeout_s >= 600


def test_persona_settings_belong_to_a_persona_model_and_name_its_voices() -> None:
    from pydantic import ValidationError

    from serve_app.config import ModelConfig

    with pytest.raises(ValidationError, match="only a PersonaPlex model"):
        ModelConfig.model_validate({"id": "m", "spec": {"hf_repo": "kyutai/x"}, "voices": ["A"]})
    with pytest.raises(ValidationError, match="not one of the voices"):
        ModelConfig.model_validate(
            {"id": "p", "spec": {"local_dir": "/p", "model_type": "personaplex"}, "default_voice": "NOPE"}
        )
    with pytest.raises(ValidationError, match="tiny_kind"):
        ModelConfig.model_validate({"id": "t", "spec": {"tiny_seed": 1, "model_type": "personaplex"}})
    mine = ModelConfig.model_validate(
        {"id": "p", "spec": {"local_dir": "/p", "model_type": "personaplex"}, "voices": ["B", "A"]}
    )
    assert model_traits(mine).voices == ("B", "A") and model_traits(mine).default_voice == "A"


def test_the_voice_names_the_ingress_knows_are_the_engines() -> None:
    """The ingress judges voices without loading a model (serve_app/engine/voice_names.py, torch-free)."""
    from serve_app.engine import personaplex, tiny_persona, voice_names

    assert voice_names.DEFAULT_VOICE == personaplex.DEFAULT_VOICE
    assert tiny_persona.TINY_VOICES == voice_names.TINY_VOICE_FRAMES
    assert voice_names.default_voice(voice_names.PERSONAPLEX_VOICES) == "NATF2"
    assert voice_names.default_voice(["VARM1", "NATM3"]) == "NATM3" and voice_names.default_voice([]) is None


def test_args_without_models_mean_the_embedded_default() -> None:
    config = load_config({"server": {"dialect": "beta"}})
    assert [m.id for m in config.models] == list(EMBEDDED_MODELS)
    assert config.server.dialect == "beta"


def test_cluster_yaml_passes_ray_validation() -> None:
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpus = sorted(t["resources"]["GPU"] for t in types.values() if t["resources"].get("GPU", 0) > 0)
    assert gpus[0] == 1 and gpus[-1] > 1


def test_cluster_validation_rejects_fractional_gpus() -> None:
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    raw["available_node_types"]["gpu-1x"]["resources"]["GPU"] = 0.5
    with pytest.raises(Exception, match="integer"):
        validate_config(prepare_config(raw))


def test_grafana_dashboard_queries_only_metrics_the_service_exports() -> None:
    dashboard = load_dashboard()
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    series = {m for e in exprs for m in re.findall(r"ray_moshi_\w+", e)}
    source = (ROOT / "deployments" / "metrics.py").read_text()
    defined = {"ray_" + PREFIX + name for name in re.findall(r'PREFIX \+ "(\w+)"', source)}
    # Prometheus names: counters get `_total`, histograms `_bucket`/`_sum`/`_count`.
    suffixes = ("", "_total", "_bucket", "_sum", "_count")
    unknown = {s for s in series if not any(s.removesuffix(x) in defined for x in suffixes if s.endswith(x))}
    missing = {d for d in defined if not any(d + x in series for x in suffixes)}
    assert not unknown and not missing, f"undefined: {unknown}, not on the dashboard: {missing}"


def test_grafana_dashboard_has_what_an_import_needs() -> None:
    """The fields Grafana's "Import dashboard" reads: a uid, unique panel ids, non-overlapping 24-column grid
    positions, a refId per target, and every query on the dashboard's own data-source variable."""
    dashboard = load_dashboard()
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
        for source in [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_cluster_starts_ray_with_the_front_that_make_serve_uses() -> None:
    from serve_app.ray_env import ray_environment

    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    starts = [
        c
        for c in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
        if "ray start" in c
    ]
    assert len(starts) == 2
    for command in starts:
        for name, value in ray_environment("haproxy").items():
            assert f"{name}={value} " in command, (name, command)


def test_binding_beyond_loopback_without_api_keys_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REALTIME_API_KEYS", raising=False)
    local = load_deploy_config(ROOT / "configs" / "local.yaml")
    assert exposure_warning(local, app_configs(local)) is None  # 127.0.0.1
    public = load_deploy_config(ROOT / "configs" / "local.yaml", host="0.0.0.0")
    warning = exposure_warning(public, app_configs(public))
    assert warning is not None and "WITHOUT API keys" in warning and "0.0.0.0" in warning
    monkeypatch.setenv("REALTIME_API_KEYS", "sk-1")
    assert exposure_warning(public, app_configs(public)) is None


def test_make_serve_starts_the_ray_dashboard_unless_told_not_to() -> None:
    from serve_app.run import _parse_args

    assert _parse_args([]).dashboard is True
    assert _parse_args(["--no-dashboard"]).dashboard is False
    assert _parse_args(["--dashboard-port", "9999"]).dashboard_port == 9999
