from __future__ import annotations

import string

import pytest
from openai.types import realtime as ga
from openai.types.beta import realtime as beta

from serve_app.protocol.errors import (
    CLOSE_CODES,
    ERRORS,
    WS_1008_POLICY_VIOLATION,
    WS_1011_INTERNAL_ERROR,
    WS_1013_TRY_AGAIN_LATER,
    ClientError,
    close_code,
    error_payload,
    render,
)

REQUIRED = {
    "invalid_json",
    "unknown_event_type",
    "invalid_event",
    "invalid_audio",
    "input_audio_buffer_commit_empty",
    "response_cancel_not_active",
    "conversation_already_has_active_response",
    "item_not_found",
    "unsupported_content_type",
    "invalid_session_update",
    "model_not_found",
    "server_at_capacity",
    "session_lost",
    "invalid_api_key",
    "server_error",
}
SERVER_SIDE = {
    "model_not_found",
    "server_at_capacity",
    "session_lost",
    "session_fell_behind",
    "invalid_api_key",
    "server_error",
}


def test_table_has_every_required_code() -> None:
    assert set(ERRORS) >= REQUIRED


@pytest.mark.parametrize("code", sorted(ERRORS))
def test_every_entry_renders(code: str) -> None:
    fields = {name for _, name, _, _ in string.Formatter().parse(ERRORS[code].message) if name}
    error_type, message = render(code, **dict.fromkeys(fields, 1))
    assert error_type in ("invalid_request_error", "server_error")
    assert message
    if code in SERVER_SIDE:
        assert not fields, "the shell renders these with fail(code) and no fields"


def test_every_close_code_belongs_to_an_error_code_and_the_rest_close_with_1011() -> None:
    assert set(CLOSE_CODES) <= set(ERRORS)
    assert close_code("server_at_capacity") == WS_1013_TRY_AGAIN_LATER == 1013  # clients retry on 1013
    assert close_code("invalid_api_key") == WS_1008_POLICY_VIOLATION == 1008
    assert close_code("session_lost") == close_code("server_error") == WS_1011_INTERNAL_ERROR == 1011


def test_hosted_service_sentences_are_kept() -> None:
    assert render("response_cancel_not_active")[1] == "Cancellation failed: no active response found"
    assert render("unsupported_content_type")[1] == "Only model output audio messages can be truncated"
    assert render("input_audio_buffer_commit_empty", min_ms=100, buffered_ms=0)[1] == (
        "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
        "but buffer only has 0.00ms of audio."
    )


def test_client_error_carries_what_the_event_needs() -> None:
    error = ClientError("item_not_found", param="item_id", item_id="item_1")
    assert (error.code, error.type, error.param, error.event_id) == (
        "item_not_found",
        "invalid_request_error",
        "item_id",
        None,
    )
    assert "item_1" in error.message and str(error) == error.message
    custom = ClientError("invalid_event", message="exactly this")
    assert custom.message == "exactly this"


@pytest.mark.parametrize("model", [ga.RealtimeErrorEvent, beta.ErrorEvent])
def test_error_payload_is_a_valid_error_event_in_both_dialects(model: type) -> None:
    payload = error_payload(
        "item_not_found", "gone", error_type="invalid_request_error", param="item_id", event_id="e1"
    )
    event = model.model_validate({**payload, "event_id": "event_1"}, strict=True)
    assert event.error.event_id == "e1" and event.error.code == "item_not_found"
