"""The one table of error codes: each code's error type and the sentence a user reads, and the WebSocket
close code of a session that one of them ends.

Client mistakes use `invalid_request_error`; failures on our side use `server_error`. Two codes are
deliberately the hosted service's benign ones: pipecat treats every `error` as fatal except
`response_cancel_not_active` and `conversation_already_has_active_response`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from serve_app.protocol.json_object import JsonObject

CLIENT_ERROR = "invalid_request_error"
SERVER_ERROR = "server_error"


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    type: str
    message: str
    """A `str.format` template; its fields are supplied where the error is raised."""


ERRORS: Final = MappingProxyType(
    {
        # Malformed client messages.
        "invalid_json": ErrorSpec(CLIENT_ERROR, "The message is not valid JSON: {detail}"),
        "invalid_event": ErrorSpec(CLIENT_ERROR, "{detail}"),
        "unknown_event_type": ErrorSpec(
            CLIENT_ERROR,
            "Invalid value: '{event_type}'. This is not a client event type of the {dialect} dialect.",
        ),
        "invalid_audio": ErrorSpec(CLIENT_ERROR, "Invalid audio: {detail}"),
        "invalid_session_update": ErrorSpec(CLIENT_ERROR, "Invalid session.update: {detail}"),
        "message_too_large": ErrorSpec(
            CLIENT_ERROR,
            "The message is {size} bytes; this server accepts at most {limit} bytes per message. It was "
            "dropped; send audio in smaller chunks.",
        ),
        # Events that are well-formed but not possible now.
        "invalid_state": ErrorSpec(CLIENT_ERROR, "{detail}"),
        "input_audio_buffer_commit_empty": ErrorSpec(
            CLIENT_ERROR,
            "Error committing input audio buffer: buffer too small. Expected at least {min_ms}ms of audio, "
            "but buffer only has {buffered_ms:.2f}ms of audio.",
        ),
        "input_audio_backlog_full": ErrorSpec(
            CLIENT_ERROR,
            "Input audio is arriving faster than real time: {backlog_ms}ms are already waiting for the "
            "model (limit {limit_ms}ms). This chunk was not accepted; send audio at real-time pace.",
        ),
        "input_audio_rate_exceeded": ErrorSpec(
            CLIENT_ERROR,
            "Input audio is arriving at more than {rate:g}x real time (after a burst of {burst_ms}ms). This "
            "chunk of {chunk_ms:.0f}ms was not accepted; send audio at real-time pace.",
        ),
        "response_cancel_not_active": ErrorSpec(
            CLIENT_ERROR, "Cancellation failed: no active response found"
        ),
        "conversation_already_has_active_response": ErrorSpec(
            CLIENT_ERROR,
            "Conversation already has an active response in progress: {response_id}. "
            "Wait until the response is finished before creating a new one.",
        ),
        "item_not_found": ErrorSpec(
            CLIENT_ERROR, "Item with item_id '{item_id}' not found in the conversation."
        ),
        "item_already_exists": ErrorSpec(CLIENT_ERROR, "Item with item_id '{item_id}' already exists."),
        "item_in_progress": ErrorSpec(
            CLIENT_ERROR,
            "Item '{item_id}' belongs to the response in progress; cancel the response before deleting it.",
        ),
        "unsupported_content_type": ErrorSpec(
            CLIENT_ERROR, "Only model output audio messages can be truncated"
        ),
        "content_index_out_of_range": ErrorSpec(
            CLIENT_ERROR, "Item '{item_id}' has no content part {content_index}; its audio is content part 0."
        ),
        "audio_end_ms_out_of_range": ErrorSpec(
            CLIENT_ERROR, "Audio content of {duration_ms}ms is already shorter than {audio_end_ms}ms"
        ),
        # Raised by the server shell; no template fields, so `fail(code)` can render them as they are.
        "invalid_api_key": ErrorSpec(
            CLIENT_ERROR,
            "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>' "
            "or as the 'openai-insecure-api-key.<key>' subprotocol.",
        ),
        "model_not_found": ErrorSpec(
            CLIENT_ERROR,
            "The requested model does not exist on this server; GET /v1/models lists the models it serves.",
        ),
        "server_at_capacity": ErrorSpec(
            SERVER_ERROR,
            "Every replica of this model is serving all the sessions it can keep in real time. "
            "Try again later.",
        ),
        "session_fell_behind": ErrorSpec(
            SERVER_ERROR,
            "The model replica fell too far behind real time for this session, so it was ended rather "
            "than answered seconds late. Reconnect to start a new session.",
        ),
        "session_lost": ErrorSpec(
            SERVER_ERROR,
            "The model replica holding this session's state went away, so the session cannot continue. "
            "Reconnect to start a new session.",
        ),
        "server_error": ErrorSpec(SERVER_ERROR, "The server had an error while processing this session."),
        # Reported while the session goes on (RealtimeSession.report).
        "server_vad_failed": ErrorSpec(
            SERVER_ERROR,
            "Server VAD failed for this session and is off for the rest of it: commit input audio with "
            "input_audio_buffer.commit. Moshi still hears everything.",
        ),
        # A delegate call that gave no answer (serve_app/delegate): the turn goes unanswered, the session on.
        "delegate_timeout": ErrorSpec(
            SERVER_ERROR,
            "The delegate model ({model}) did not answer within {timeout_s:g} s; this turn has no answer. "
            "The session goes on.",
        ),
        "delegate_failed": ErrorSpec(
            SERVER_ERROR, "The delegate model failed: {detail}. This turn has no answer; the session goes on."
        ),
        "delegate_invalid_reply": ErrorSpec(
            SERVER_ERROR, "The delegate model's reply was not used: {detail}."
        ),
        # Session limits (the session or the socket shell ends the session with these).
        "session_expired": ErrorSpec(
            CLIENT_ERROR, "Your session hit the maximum duration of {limit_s} seconds. Reconnect to go on."
        ),
        "idle_timeout": ErrorSpec(
            CLIENT_ERROR, "No client event arrived for {limit_s} seconds, so the session was closed."
        ),
        "client_too_slow": ErrorSpec(
            CLIENT_ERROR,
            "The client stopped reading: server events waited longer than the server buffers for this "
            "socket, so the session was closed. Read events as they arrive.",
        ),
        "origin_not_allowed": ErrorSpec(
            CLIENT_ERROR, "This server does not accept realtime sessions from the page's origin."
        ),
        "too_many_sessions": ErrorSpec(
            CLIENT_ERROR,
            "This API key already has the most concurrent sessions this server allows. Close one first.",
        ),
    }
)


# WebSocket close codes (RFC 6455 §7.4.1), named as starlette.status names them (no Starlette here: no I/O).
WS_1000_NORMAL_CLOSURE: Final = 1000
WS_1008_POLICY_VIOLATION: Final = 1008
WS_1011_INTERNAL_ERROR: Final = 1011
WS_1013_TRY_AGAIN_LATER: Final = 1013

CLOSE_CODES: Final = MappingProxyType(
    {
        # The client's doing (or its key's, origin's, pace's): retrying as it is will not help.
        "invalid_api_key": WS_1008_POLICY_VIOLATION,
        "model_not_found": WS_1008_POLICY_VIOLATION,
        "too_many_sessions": WS_1008_POLICY_VIOLATION,
        "origin_not_allowed": WS_1008_POLICY_VIOLATION,
        "client_too_slow": WS_1008_POLICY_VIOLATION,
        "session_expired": WS_1008_POLICY_VIOLATION,
        "idle_timeout": WS_1008_POLICY_VIOLATION,
        # Load: a new session later may well be served.
        "server_at_capacity": WS_1013_TRY_AGAIN_LATER,
        "session_fell_behind": WS_1013_TRY_AGAIN_LATER,
    }
)
"""How a session ended by an error code is closed; every other code closes it with 1011."""


def close_code(code: str) -> int:
    """The WebSocket close code for a session that ends with error `code`."""
    return CLOSE_CODES.get(code, WS_1011_INTERNAL_ERROR)


def render(code: str, **fields: Any) -> tuple[str, str]:
    """(error type, message) for a code; a KeyError here is a bug, not a client mistake."""
    spec = ERRORS[code]
    return spec.type, spec.message.format(**fields)


class ClientError(Exception):
    """A client event that cannot be honoured; becomes exactly one `error` event, and the session goes on."""

    def __init__(
        self, code: str, *, param: str | None = None, message: str | None = None, **fields: Any
    ) -> None:
        error_type, rendered = render(code, **fields) if message is None else (ERRORS[code].type, message)
        super().__init__(rendered)
        self.code = code
        self.type = error_type
        self.message = rendered
        self.param = param
        self.event_id: str | None = None
        """The offending client event's id, echoed so clients can correlate (filled in by the session)."""


def error_payload(
    code: str, message: str, *, error_type: str, param: str | None = None, event_id: str | None = None
) -> JsonObject:
    """The `error` server event (without its own event_id), same shape in both dialects."""
    return {
        "type": "error",
        "error": {"type": error_type, "code": code, "message": message, "param": param, "event_id": event_id},
    }
