"""Ephemeral client secrets (`ek_…`): minted by `POST /v1/realtime/client_secrets` with a real API key,
accepted wherever an API key is (the WebSocket handshake, a WebRTC call's `Authorization`), never to mint.

A client secret is a signed token, not a row in a table, so every ingress replica honours it and it
survives an ingress restart:

    "ek_" + b64url(payload) + "." + b64url(HMAC-SHA256(signing key, "ek_" + b64url(payload)))
    payload = compact JSON {"v": 1, "e": expires_at, "k": minting key's id, "m": model, "n": nonce,
                            "s": the session configuration given at minting (type and model filled in)}

The signing key is `ServerSettings.client_secret_signing_key`, else env REALTIME_CLIENT_SECRET_KEY, else
derived from the configured API keys (a restart with the same keys honours old secrets; changing the keys
revokes them all). A minting key's id is an HMAC of the key under the signing key (no key in the token), and
a secret whose minting key is no longer configured is refused, so removing one API key revokes its secrets.
With no API keys at all (an open server) the signing key is a fixed derivation: anyone can forge a secret,
which costs nothing since anyone may connect anyway (docs/SECURITY.md).

The token's session configuration applies from the session's start (`RealtimeSession.preset`, so
session.created shows it) and fixes the session's model and kind (a URL's `?model=` / `?intent=` is
ignored); the client may still `session.update` it afterwards, as with OpenAI's client secrets.

API (sans I/O except `client_secrets_route`; `now` is epoch seconds):
- `admit(key, settings, now) -> Admitted | ApiError`: may this key (`api_key_from_handshake`'s) open a
  session or a call? `Admitted.identity` is what `KeySessions` counts (an `ek_` counts against the API key
  that minted it; None on an open server), `Admitted.minted` the secret's `MintedKey` (model, kind, session
  for `RealtimeSession.preset`), None for a real API key. An `ApiError` carries code `invalid_api_key`,
  HTTP status 401 and a message (it says "expired" when the secret is).
- `admit_authorization(header, settings, now)`: the same from an HTTP `Authorization` header.
- `verify(key, settings, now) -> MintedKey | None`: a valid unexpired secret, else None.
- `check(key, settings, now) -> MintedKey | ApiError`: the same, saying why not.
- `minting_identity(header, settings) -> str | ApiError`: who may mint (a real API key; no `ek_`).
- `parse_request(body) -> MintRequest`, `effective_session(session, gateway, config, now)`, `mint(...)`:
  the endpoint's steps; `effective_session` also validates a WebRTC call's `session` (raises ApiError 400).
- `ApiError.body()` / `.response()`: the OpenAI-shaped HTTP error `{"error": {message, type, code, param}}`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve_app.config import AppConfig, ServerSettings
from serve_app.protocol.dialect import Dialect, api_key_from_handshake
from serve_app.protocol.errors import ClientError, render
from serve_app.protocol.json_object import JsonObject
from serve_app.server.api_error import ApiError
from serve_app.server.gateway import ModelGateway
from serve_app.server.transcription_sessions import transcription_backend
from serve_app.session.config import SessionKind
from serve_app.session.session import RealtimeSession

EK_PREFIX = "ek_"
ENV_SIGNING_KEY = "REALTIME_CLIENT_SECRET_KEY"
MIN_TTL_S, DEFAULT_TTL_S, MAX_TTL_S = 10, 600, 7200
"""`expires_after.seconds`: OpenAI's bounds and default."""
MAX_SESSION_BYTES = 8 * 1024
"""The largest session configuration (compact JSON) a secret carries: it travels in every handshake."""
MAX_BODY_BYTES = 4 * MAX_SESSION_BYTES
MAX_TOKEN_CHARS = 2 * MAX_SESSION_BYTES
"""Longer keys are refused unread (an 8 KiB session is about 11 K characters once encoded)."""
TOKEN_VERSION = 1
MINT_HINT = "Mint a new one with POST /v1/realtime/client_secrets."


@dataclass(frozen=True)
class MintedKey:
    """A verified client secret's contents."""

    minted_by: str
    """The minting API key's id (`key_id`), "" on an open server."""
    expires_at: int
    model: str
    """The session's model: a Moshi model id, or a transcription session's ASR backend id."""
    session: JsonObject
    """The session configuration given at minting (GA shape, `type` set): `RealtimeSession.preset`'s."""

    @property
    def kind(self) -> SessionKind:
        return SessionKind(self.session.get("type", SessionKind.REALTIME))


@dataclass(frozen=True)
class Admitted:
    identity: str | None
    """What KeySessions counts (the API key's id; an `ek_`'s minting key's); None: nothing to count."""
    minted: MintedKey | None
    """The client secret it came with; None for an API key (or none, on an open server)."""


@dataclass(frozen=True)
class MintRequest:
    ttl_s: int
    session: JsonObject


# The token ------------------------------------------------------------------------------------------


def signing_key(settings: ServerSettings) -> bytes:
    """The HMAC key of this server's secrets (see the module docstring for where it comes from)."""
    explicit = settings.client_secret_signing_key or os.environ.get(ENV_SIGNING_KEY, "").strip()
    if explicit:
        return _derive(b"explicit", explicit)
    # Sorted, NUL-joined: the same key set gives the same key on every replica and after a restart.
    return _derive(b"api-keys", "\0".join(sorted(settings.effective_api_keys())))


def key_id(api_key: str, settings: ServerSettings) -> str:
    """An API key's id in tokens and in KeySessions: keyed by the signing key, so a token's reader learns
    nothing it could test guesses of the key against."""
    return _b64(hmac.new(signing_key(settings), b"key-id\0" + api_key.encode(), hashlib.sha256).digest()[:12])


def mint(
    *, session: JsonObject, model: str, minted_by: str, expires_at: int, settings: ServerSettings
) -> str:
    nonce = secrets.token_urlsafe(9)  # two secrets minted alike still differ
    payload = {"v": TOKEN_VERSION, "e": expires_at, "k": minted_by, "m": model, "n": nonce, "s": session}
    signed = EK_PREFIX + _b64(_compact(payload))
    return f"{signed}.{_b64(_mac(signing_key(settings), signed))}"


def check(key: str, settings: ServerSettings, now: float) -> MintedKey | ApiError:
    """The secret `key` carries, or why it is refused (signature first: a forged key learns nothing)."""
    signed, _, mac = key.rpartition(".")
    if not signed.startswith(EK_PREFIX) or len(key) > MAX_TOKEN_CHARS:
        return _invalid_secret()
    try:
        given = base64.urlsafe_b64decode(_padded(mac))
        if not hmac.compare_digest(given, _mac(signing_key(settings), signed)):
            return _invalid_secret()
        payload: Any = json.loads(base64.urlsafe_b64decode(_padded(signed[len(EK_PREFIX) :])))
    except (binascii.Error, ValueError):  # json's errors are ValueErrors
        return _invalid_secret()
    minted = _minted(payload)
    if minted is None:
        return _invalid_secret()
    keys = settings.effective_api_keys()
    if keys and minted.minted_by not in {key_id(k, settings) for k in keys}:
        return _invalid_secret()
    if now >= minted.expires_at:
        ago = int(now - minted.expires_at)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(minted.expires_at))
        return _refused(f"The client secret expired at {stamp} ({ago} s ago). {MINT_HINT}")
    return minted


def verify(key: str, settings: ServerSettings, now: float) -> MintedKey | None:
    checked = check(key, settings, now)
    return checked if isinstance(checked, MintedKey) else None


# Admission --------------------------------------------------------------------------------------------


def admit(key: str | None, settings: ServerSettings, now: float) -> Admitted | ApiError:
    """Whether `key` may open a session or a call (module docstring). A configured API key wins over the
    `ek_` reading; an `ek_` key must verify even on an open server (its session configuration applies)."""
    keys = settings.effective_api_keys()
    if key is not None and key in keys:
        return Admitted(identity=key_id(key, settings), minted=None)
    if key is not None and key.startswith(EK_PREFIX):
        checked = check(key, settings, now)
        if isinstance(checked, ApiError):
            return checked
        return Admitted(identity=checked.minted_by if keys else None, minted=checked)
    if keys:
        return _refused(render("invalid_api_key")[1])
    return Admitted(identity=None, minted=None)


def admit_authorization(
    authorization: str | None, settings: ServerSettings, now: float
) -> Admitted | ApiError:
    """`admit` for an HTTP request's `Authorization: Bearer <key>` header (a WebRTC call)."""
    return admit(_bearer(authorization), settings, now)


def minting_identity(authorization: str | None, settings: ServerSettings) -> str | ApiError:
    """The id of the API key minting a secret ("" on an open server), or why it may not: an `ek_` key
    never mints (a page that holds one cannot extend its own life)."""
    key = _bearer(authorization)
    keys = settings.effective_api_keys()
    if key is not None and key in keys:
        return key_id(key, settings)
    if key is not None and key.startswith(EK_PREFIX):
        detail = "A client secret (ek_…) cannot mint client secrets: mint them with an API key."
        return _refused(detail)
    if keys:
        return _refused(render("invalid_api_key")[1])
    return ""


# The endpoint's steps -----------------------------------------------------------------------------------


def parse_request(body: bytes) -> MintRequest:
    """The request body (`ClientSecretCreateParams`; empty means all defaults), or ApiError 400."""
    if not body.strip():
        return MintRequest(DEFAULT_TTL_S, {})
    try:
        data: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_value", "The request body must be a JSON object.")
    for name in data:
        if name not in ("expires_after", "session"):
            raise ApiError(400, "unknown_parameter", f"Unknown parameter: '{name}'.", param=name)
    session = data.get("session") or {}
    if not isinstance(session, dict):
        raise ApiError(400, "invalid_value", "'session' must be an object.", param="session")
    size = len(_compact(session))
    if size > MAX_SESSION_BYTES:
        detail = f"'session' is {size} bytes of JSON; a client secret carries at most {MAX_SESSION_BYTES}."
        raise ApiError(400, "invalid_value", detail, param="session")
    return MintRequest(_ttl_s(data.get("expires_after")), session)


def effective_session(
    session: JsonObject, gateway: ModelGateway, config: AppConfig, now: float
) -> tuple[str, JsonObject, JsonObject]:
    """(model, the session to carry, the session object a session started with it shows) for a GA session
    configuration, or ApiError 400: it is applied to a session core as its first `session.update` would be,
    so a secret never carries what its session would refuse. The model defaults to the first served."""
    kind_name = session.get("type", SessionKind.REALTIME.value)
    if kind_name not in (SessionKind.REALTIME.value, SessionKind.TRANSCRIPTION.value):
        detail = f"session.type {kind_name!r}: expected 'realtime' or 'transcription'."
        raise ApiError(400, "invalid_value", detail, param="session.type")
    kind = SessionKind(kind_name)
    if kind is SessionKind.REALTIME:
        served = gateway.model_ids()
        model = session.get("model") or (served[0] if served else "")
        if model not in served:
            raise ApiError(400, "model_not_found", render("model_not_found")[1], param="session.model")
        traits = gateway.traits(model)
        carried = {**session, "type": kind.value, "model": model}
    else:
        asked = ((session.get("audio") or {}).get("input") or {}).get("transcription") or {}
        named = asked.get("model") if isinstance(asked, dict) else None
        model = transcription_backend(config.asr, named if isinstance(named, str) else None).id
        traits = None
        carried = {**session, "type": kind.value}
    core = RealtimeSession(
        session_id=f"sess_{uuid.uuid4().hex[:24]}",
        model_id=model,
        dialect=Dialect.GA,
        settings=config.session,
        now_epoch_s=now,
        traits=traits,
        kind=kind,
    )
    try:
        echo = core.preset(carried)
    except ClientError as exc:
        raise ApiError(400, exc.code, exc.message, param=exc.param) from None
    return model, carried, echo


def client_secrets_route(gateway: ModelGateway, config: AppConfig) -> Route:
    """`POST /v1/realtime/client_secrets` → 200 `{"value": "ek_…", "expires_at", "session"}`."""

    async def create(request: Request) -> JSONResponse:
        now = time.time()
        minter = minting_identity(request.headers.get("authorization"), config.server)
        if isinstance(minter, ApiError):
            return minter.response()
        try:
            wanted = parse_request(await _body(request))
            model, carried, echo = effective_session(wanted.session, gateway, config, now)
        except ApiError as exc:
            return exc.response()
        expires_at = int(now) + wanted.ttl_s
        value = mint(
            session=carried, model=model, minted_by=minter, expires_at=expires_at, settings=config.server
        )
        return JSONResponse({"value": value, "expires_at": expires_at, "session": echo})

    return Route("/v1/realtime/client_secrets", create, methods=["POST"])


# Plumbing ---------------------------------------------------------------------------------------------


def _ttl_s(expires_after: Any) -> int:
    if expires_after is None:
        return DEFAULT_TTL_S
    if not isinstance(expires_after, dict):
        raise ApiError(400, "invalid_value", "'expires_after' must be an object.", param="expires_after")
    anchor = expires_after.get("anchor", "created_at")
    if anchor != "created_at":
        detail = f"expires_after.anchor {anchor!r}: only 'created_at' is supported."
        raise ApiError(400, "invalid_value", detail, param="expires_after.anchor")
    seconds = expires_after.get("seconds", DEFAULT_TTL_S)
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not MIN_TTL_S <= seconds <= MAX_TTL_S:
        detail = f"expires_after.seconds must be an integer from {MIN_TTL_S} to {MAX_TTL_S}; got {seconds!r}."
        raise ApiError(400, "invalid_value", detail, param="expires_after.seconds")
    return seconds


async def _body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, "invalid_value", f"The request body exceeds {MAX_BODY_BYTES} bytes.")
    return body


def _minted(payload: Any) -> MintedKey | None:
    """The payload's fields, if it has them all with their types (a signed token always does)."""
    if not isinstance(payload, dict) or payload.get("v") != TOKEN_VERSION:
        return None
    expires_at, minted_by, model, session = (payload.get(f) for f in ("e", "k", "m", "s"))
    if not (isinstance(expires_at, int) and isinstance(minted_by, str) and isinstance(model, str)):
        return None
    if not isinstance(session, dict):
        return None
    return MintedKey(minted_by=minted_by, expires_at=expires_at, model=model, session=session)


def _bearer(authorization: str | None) -> str | None:
    return api_key_from_handshake({"authorization": authorization}, (), {}) if authorization else None


def _refused(message: str) -> ApiError:
    return ApiError(401, "invalid_api_key", message)


def _invalid_secret() -> ApiError:
    return _refused(
        "Invalid client secret: this server did not issue it, or its signing key or the API key that "
        f"minted it has changed since. {MINT_HINT}"
    )


def _derive(purpose: bytes, secret: str) -> bytes:
    return hmac.new(b"realtime-client-secret/" + purpose, secret.encode(), hashlib.sha256).digest()


def _mac(key: bytes, signed: str) -> bytes:
    return hmac.new(key, signed.encode("utf-8", "replace"), hashlib.sha256).digest()  # any header text


def _compact(value: JsonObject) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _b64(data: bytes) -> str:
    # Unpadded base64url: `=` is not a token character, and the key travels in a WebSocket subprotocol.
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _padded(text: str) -> str:
    return text + "=" * (-len(text) % 4)
