"""The body of `POST /v1/realtime/calls`: an SDP offer, and maybe the session's initial configuration.

Three shapes reach this endpoint: raw `application/sdp` (browsers, agents-js; the configuration is the
ephemeral key's), `multipart/form-data` with an `sdp` part and an optional `session` JSON part (backends
with an API key, current openai SDKs) and JSON `{sdp, session}` (openai-python before its multipart fix).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
from dataclasses import dataclass
from typing import Any

from aiortc.sdp import SessionDescription

from serve_app.server.api_error import ApiError


class OfferError(ApiError):
    """The request cannot become a call; `status` and `code` are what the client gets."""


@dataclass(frozen=True)
class CallOffer:
    sdp: str
    session: dict[str, Any] | None
    """The `session` part: a client_secrets-shaped session object (`type`, `model`, `instructions`, …)."""


def parse_offer(content_type: str, body: bytes) -> CallOffer:
    """Raises OfferError: 415 for another content type, 400 for a body or SDP that does not parse."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/sdp":
        return CallOffer(_sdp(_text(body)), None)
    if media_type == "multipart/form-data":
        return _multipart(content_type, body)
    if media_type == "application/json":
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise OfferError(400, "invalid_json", f"The body is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("sdp"), str):
            detail = "The JSON body must be an object with an 'sdp' string."
            raise OfferError(400, "invalid_offer", detail, "sdp")
        return CallOffer(_sdp(data["sdp"]), _session(data.get("session")))
    raise OfferError(
        415,
        "unsupported_media_type",
        f"Unsupported Content-Type {media_type or '(none)'!r}: send the SDP offer as application/sdp, "
        "or as multipart/form-data with an 'sdp' part and an optional 'session' JSON part.",
    )


def _multipart(content_type: str, body: bytes) -> CallOffer:
    # The stdlib MIME parser: a form is a multipart MIME message once its Content-Type header is prepended.
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    parts: dict[str, str] = {}
    if message.is_multipart():
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                parts[name] = _text(payload)
    if "sdp" not in parts:
        raise OfferError(400, "invalid_offer", "The multipart body has no 'sdp' part.", "sdp")
    session = None
    if "session" in parts:
        try:
            session = json.loads(parts["session"])
        except ValueError as exc:
            detail = f"The 'session' part is not valid JSON: {exc}"
            raise OfferError(400, "invalid_json", detail, "session") from None
    return CallOffer(_sdp(parts["sdp"]), _session(session))


def _session(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise OfferError(400, "invalid_session", "'session' must be a JSON object.", "session")
    return value


def _text(body: bytes) -> str:
    try:
        return body.decode()
    except UnicodeDecodeError:
        raise OfferError(400, "invalid_offer", "The SDP offer is not UTF-8 text.", "sdp") from None


def _sdp(text: str) -> str:
    """The offer, if it parses as SDP with an audio section (a call without audio has nothing to say)."""
    sdp = text.strip().replace("\r\n", "\n").replace("\n", "\r\n") + "\r\n"
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever a malformed line makes it raise
        raise OfferError(400, "invalid_offer", f"The SDP offer does not parse: {exc}", "sdp") from None
    if not sdp.startswith("v=0") or not any(m.kind == "audio" for m in parsed.media):
        raise OfferError(400, "invalid_offer", "The SDP offer has no audio media section.", "sdp")
    return sdp
