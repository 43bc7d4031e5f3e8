"""What `make serve` (serve_app/run.py) tells its operator at start and at Ctrl-C, from the Serve YAML."""

from __future__ import annotations

from pathlib import Path

from serve_app.run import (
    SHUTDOWN_MARGIN_S,
    load_deploy_config,
    loopback_note,
    session_grace_s,
    shutdown_notice,
)

LOCAL = Path(__file__).resolve().parents[1] / "configs" / "local.yaml"


def test_ctrl_c_says_at_once_how_long_it_may_wait_and_why() -> None:
    schema = load_deploy_config(LOCAL)
    # The model deployments give sessions 60 s; the ingress and the ASR take Serve's default (20 s).
    assert session_grace_s(schema) == 60.0
    notice = shutdown_notice(schema)
    assert notice.startswith("shutting down: waiting up to 60 s for open sessions to end")
    assert "with none open, a few seconds" in notice
    assert SHUTDOWN_MARGIN_S > 0  # the controller gets longer than the sessions: no "failed to shut down"


def test_rays_loopback_warning_is_explained_only_where_it_appears() -> None:
    local = load_deploy_config(LOCAL)
    note = loopback_note(local, "haproxy")
    assert note is not None and "HTTPOptions.host='127.0.0.1'" in note and "expected" in note
    assert loopback_note(local, "proxy") is None  # Serve's Python proxy does not warn
    assert loopback_note(load_deploy_config(LOCAL, host="0.0.0.0"), "haproxy") is None
