"""Ephemeral client secrets (`ek_…`): the token itself, then `POST /v1/realtime/client_secrets` through the
official openai SDK and the `ek_` sessions it opens on an in-process server (the tiny PersonaPlex-shaped
checkpoint, so a minted persona has a slot to reach), including a second ingress built from the same
config (a restart, or another replica)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import uvicorn
import websockets
from openai import AsyncOpenAI, OpenAI
from openai.types.realtime.client_secret_create_response import ClientSecretCreateResponse
from websockets.asyncio.client import ClientConnection

from serve_app.config import EMBEDDED_PERSONA_MODEL, AppConfig, RealtimeLimits, ServerSettings
from serve_app.engine.port import Persona
from serve_app.protocol.codecs import encode_base64
from serve_app.server.app import build_realtime_app
from serve_app.server.client_secrets import (
    EK_PREFIX,
    ENV_SIGNING_KEY,
    Admitted,
    ApiError,
    MintedKey,
    admit,
    admit_authorization,
    check,
    key_id,
    mint,
    minting_identity,
    parse_request,
    verify,
)
from serve_app.session.settings import SessionSettings
from tests.fixtures.audio import speech_like, to_pcm16
from tests.fixtures.net import free_port
from tests.server.conftest import RunningServer, serve_in_process

KEY, OTHER_KEY = "sk-secrets-one", "sk-secrets-two"
PERSONA = EMBEDDED_PERSONA_MODEL
SESSION: dict[str, Any] = {
    "type": "realtime",
    "model": PERSONA,
    "instructions": "You are a pirate.",
    "audio": {"output": {"voice": "VARF2"}, "input": {"turn_detection": None}},
}
"""A typical minted session: a persona the page cannot change before it starts."""


@pytest.fixture(autouse=True)
def _no_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The keys these tests configure are the only ones (a developer's shell may export either)."""
    monkeypatch.delenv(ENV_SIGNING_KEY, raising=False)
    monkeypatch.delenv("REALTIME_API_KEYS", raising=False)


def settings(**fields: Any) -> ServerSettings:
    return ServerSettings(**({"api_keys": (KEY, OTHER_KEY)} | fields))


# The token, sans I/O ------------------------------------------------------------------------------


def test_a_secret_round_trips_what_it_carries_and_stays_short() -> None:
    server = settings()
    value = mint(
        session=SESSION, model=PERSONA, minted_by=key_id(KEY, server), expires_at=2_000, settings=server
    )
    assert value.startswith(EK_PREFIX) and len(value) < 400, len(value)
    assert all(c.isalnum() or c in "_-." for c in value)  # fits a WebSocket subprotocol token
    assert verify(value, server, now=1_999) == MintedKey(key_id(KEY, server), 2_000, PERSONA, SESSION)
    assert KEY not in value and key_id(KEY, server) != key_id(OTHER_KEY, server)
    # Two secrets minted alike differ (the nonce).
    assert value != mint(
        session=SESSION, model=PERSONA, minted_by=key_id(KEY, server), expires_at=2_000, settings=server
    )


def test_a_tampered_or_foreign_secret_is_refused() -> None:
    server = settings()
    value = mint(
        session=SESSION, model=PERSONA, minted_by=key_id(KEY, server), expires_at=2_000, settings=server
    )
    signed, _, mac = value.rpartition(".")
    payload = json.loads(base64.urlsafe_b64decode(signed[len(EK_PREFIX) :] + "=="))
    payload["m"], payload["e"] = "moshi-sft", 9_999_999_999  # another model, a longer life
    forged = EK_PREFIX + base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    garbage = ("ek_nothing", "ek_.", "ek_é.é", "ek_" + "A" * 40_000 + "." + mac)
    for bad in (f"{forged}.{mac}", value[:-2] + ("AA" if value[-2:] != "AA" else "BB"), *garbage):
        refused = check(bad, server, now=1_000)
        assert isinstance(refused, ApiError) and refused.code == "invalid_api_key" and refused.status == 401
        assert "expired" not in refused.message
    # Another signing key (set, or derived from other API keys) refuses it too.
    assert verify(value, settings(client_secret_signing_key="rotated"), now=1_000) is None
    assert verify(value, settings(api_keys=(KEY, "sk-rotated")), now=1_000) is None


def test_an_expired_secret_says_so() -> None:
    server = settings()
    value = mint(
        session=SESSION, model=PERSONA, minted_by=key_id(KEY, server), expires_at=2_000, settings=server
    )
    refused = check(value, server, now=2_000)
    assert isinstance(refused, ApiError) and refused.code == "invalid_api_key"
    assert "expired" in refused.message and "POST /v1/realtime/client_secrets" in refused.message
    assert verify(value, server, now=2_000) is None


def test_the_signing_key_comes_from_settings_then_env_then_the_api_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    derived = settings()
    value = mint(
        session={}, model=PERSONA, minted_by=key_id(KEY, derived), expires_at=2_000, settings=derived
    )
    assert verify(value, settings(), now=1_000) is not None  # a restart with the same keys
    monkeypatch.setenv(ENV_SIGNING_KEY, "from-env")
    assert verify(value, settings(), now=1_000) is None  # the env key replaces the derived one
    by_env = mint(
        session={}, model=PERSONA, minted_by=key_id(KEY, settings()), expires_at=2_000, settings=settings()
    )
    assert verify(by_env, settings(client_secret_signing_key="from-env"), now=1_000) is not None
    assert verify(by_env, settings(client_secret_signing_key="other"), now=1_000) is None
    # With a fixed signing key, dropping the API key that minted a secret revokes that secret only.
    fixed = settings(client_secret_signing_key="fixed")
    by_one = mint(session={}, model=PERSONA, minted_by=key_id(KEY, fixed), expires_at=2_000, settings=fixed)
    by_two = mint(
        session={}, model=PERSONA, minted_by=key_id(OTHER_KEY, fixed), expires_at=2_000, settings=fixed
    )
    dropped = settings(client_secret_signing_key="fixed", api_keys=(OTHER_KEY,))
    assert verify(by_one, dropped, now=1_000) is None
    assert verify(by_two, dropped, now=1_000) is not None


def test_admission_counts_a_secret_against_its_minting_key_and_only_keys_mint() -> None:
    server = settings()
    minted_by = key_id(OTHER_KEY, server)
    value = mint(session=SESSION, model=PERSONA, minted_by=minted_by, expires_at=2_000, settings=server)
    admitted = admit_authorization(f"Bearer {value}", server, now=1_000)
    assert isinstance(admitted, Admitted) and admitted.identity == minted_by
    assert admitted.minted is not None and admitted.minted.session == SESSION
    assert admit(OTHER_KEY, server, now=1_000) == Admitted(identity=minted_by, minted=None)
    for refused in (
        admit(None, server, 1_000),
        admit("sk-wrong", server, 1_000),
        admit(value, server, 2_001),
    ):
        assert isinstance(refused, ApiError) and refused.code == "invalid_api_key"
    assert minting_identity(f"Bearer {KEY}", server) == key_id(KEY, server)
    for header in (f"Bearer {value}", "Bearer sk-wrong", None):
        cannot = minting_identity(header, server)
        assert isinstance(cannot, ApiError) and cannot.status == 401
    assert "cannot mint" in str(minting_identity(f"Bearer {value}", server))


def test_an_open_server_admits_any_key_but_still_checks_secrets() -> None:
    open_server = ServerSettings()
    assert admit(None, open_server, 1_000) == Admitted(None, None)
    assert admit("sk-anything", open_server, 1_000) == Admitted(None, None)
    assert minting_identity(None, open_server) == ""
    value = mint(session={}, model=PERSONA, minted_by="", expires_at=2_000, settings=open_server)
    admitted = admit(value, open_server, 1_000)
    assert isinstance(admitted, Admitted) and admitted.identity is None and admitted.minted is not None
    assert isinstance(admit(value, open_server, 2_000), ApiError)  # expired, even here
    # A secret minted on an open server is worthless once keys are configured, even under one signing key.
    fixed = mint(
        session={},
        model=PERSONA,
        minted_by="",
        expires_at=2_000,
        settings=ServerSettings(client_secret_signing_key="x"),
    )
    assert verify(fixed, ServerSettings(client_secret_signing_key="x"), 1_000) is not None
    assert verify(fixed, settings(client_secret_signing_key="x"), 1_000) is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"[1]", None),
        (b"{not json", None),
        (b'{"expires_after": {"seconds": 5}}', "expires_after.seconds"),
        (b'{"expires_after": {"seconds": 7201}}', "expires_after.seconds"),
        (b'{"expires_after": {"seconds": "600"}}', "expires_after.seconds"),
        (b'{"expires_after": {"anchor": "now"}}', "expires_after.anchor"),
        (b'{"session": "realtime"}', "session"),
        (b'{"model": "personaplex"}', "model"),
        (json.dumps({"session": {"instructions": "x" * 9000}}).encode(), "session"),
    ],
)
def test_bad_request_bodies_name_what_is_wrong(body: bytes, param: str | None) -> None:
    with pytest.raises(ApiError) as refused:
        parse_request(body)
    assert refused.value.status == 400 and refused.value.param == param and refused.value.message


def test_request_defaults() -> None:
    assert (parse_request(b"").ttl_s, parse_request(b"{}").session) == (600, {})
    assert parse_request(b'{"expires_after": {"anchor": "created_at", "seconds": 10}}').ttl_s == 10


# On a live server ----------------------------------------------------------------------------------


def _config(**server: Any) -> AppConfig:
    lenient = RealtimeLimits(admit_fraction=None, max_lag_ms=5000)
    persona = next(m for m in AppConfig.embedded_default(slots=3).models if m.id == PERSONA)
    return AppConfig(
        models=(persona.model_copy(update={"realtime": lenient, "slots": 3}),),
        session=SessionSettings(utterance_silence_ms=480),
        server={"api_keys": (KEY, OTHER_KEY), "max_loop_lag_ms": None, "max_sessions_per_key": 2, **server},
    )


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[RunningServer]:
    with serve_in_process(_config()) as server:
        yield server


@contextlib.contextmanager
def another_ingress(server: RunningServer, config: AppConfig) -> Iterator[str]:
    """A second app, built from `config`, on the first one's model slots (as a restarted ingress or another
    replica would be); yields its host."""
    port = free_port()
    app = build_realtime_app(server.gateway, config)
    ingress = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=ingress.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not ingress.started:
        assert time.monotonic() < deadline, "second ingress did not start"
        time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        ingress.should_exit = True
        thread.join(timeout=10)


def _client(server: RunningServer, key: str = KEY) -> OpenAI:
    return OpenAI(api_key=key, base_url=f"{server.http_base}/v1", max_retries=0)


def _mint(server: RunningServer, session: dict[str, Any] = SESSION, seconds: int = 120) -> str:
    created = _client(server).realtime.client_secrets.create(
        session=session,  # type: ignore[arg-type]
        expires_after={"anchor": "created_at", "seconds": seconds},
    )
    return created.value


async def _next_event(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return event


async def _refused(host: str, key: str, *, browser: bool = False) -> dict[str, Any]:
    """Connect with `key` (as a header, or as a browser's subprotocol); the error event, after the close."""
    url = f"ws://{host}/v1/realtime?model={PERSONA}"
    if browser:
        connecting = websockets.connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{key}"])  # type: ignore[list-item]
    else:
        connecting = websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"})
    async with connecting as ws:
        event = await _next_event(ws)
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008
    assert event["type"] == "error", event
    return event


def test_the_sdk_mints_a_secret_and_its_session_is_what_a_session_will_show(
    keyed_server: RunningServer,
) -> None:
    before = int(time.time())
    raw = _client(keyed_server).realtime.client_secrets.with_raw_response.create(
        session=SESSION,  # type: ignore[arg-type]
        expires_after={"anchor": "created_at", "seconds": 60},
    )
    assert raw.status_code == 200
    created = ClientSecretCreateResponse.model_validate(json.loads(raw.text))  # the GA type, validated
    assert created.value.startswith(EK_PREFIX) and len(created.value) < 500
    assert before + 60 <= created.expires_at <= int(time.time()) + 60
    session: Any = created.session
    assert (session.type, session.object, session.model) == ("realtime", "realtime.session", PERSONA)
    assert session.instructions == "You are a pirate." and session.audio.output.voice == "VARF2"
    assert session.audio.input.turn_detection is None
    # All defaults: the first served model, 600 s.
    default = _client(keyed_server).realtime.client_secrets.create()
    assert default.session.model == PERSONA and default.expires_at >= before + 600  # type: ignore[union-attr]


def test_a_transcription_secret_opens_a_transcription_session(keyed_server: RunningServer) -> None:
    session = {"type": "transcription", "audio": {"input": {"transcription": {"model": "pocketsphinx"}}}}
    raw = _client(keyed_server).realtime.client_secrets.with_raw_response.create(session=session)  # type: ignore[arg-type]
    created = ClientSecretCreateResponse.model_validate(json.loads(raw.text))
    assert created.session.type == "transcription"

    async def connect() -> dict[str, Any]:
        url = f"ws://{keyed_server.host}/v1/realtime"  # no intent: the secret says what the session is
        async with websockets.connect(
            url, additional_headers={"Authorization": f"Bearer {created.value}"}
        ) as ws:
            return await _next_event(ws)

    event = asyncio.run(connect())
    assert event["type"] == "session.created" and event["session"]["type"] == "transcription", event


def test_minting_needs_a_real_api_key_and_a_sound_body(keyed_server: RunningServer) -> None:
    value = _mint(keyed_server)
    for key in (value, "sk-wrong"):
        with pytest.raises(openai.AuthenticationError) as refused:
            _client(keyed_server, key).realtime.client_secrets.create()
        body: Any = refused.value.body
        assert refused.value.status_code == 401 and body["code"] == "invalid_api_key"
    assert (
        "cannot mint"
        in httpx.post(
            f"{keyed_server.http_base}/v1/realtime/client_secrets",
            headers={"Authorization": f"Bearer {value}"},
        ).json()["error"]["message"]
    )
    # What the session would refuse, the secret is refused (the same error a session.update would get).
    bad_sessions: list[tuple[dict[str, Any], str, str]] = [
        ({"type": "realtime", "model": "gpt-nope"}, "model_not_found", "session.model"),
        (
            {"type": "realtime", "audio": {"output": {"voice": "alloy"}}},
            "invalid_session_update",
            "session.audio.output.voice",
        ),
        (
            {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 8000}}}},
            "invalid_event",
            "session.audio.input.format.rate",
        ),
    ]
    for session, code, param in bad_sessions:
        with pytest.raises(openai.BadRequestError) as bad:
            _client(keyed_server).realtime.client_secrets.create(session=session)  # type: ignore[arg-type]
        error: Any = bad.value.body
        assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error"), error
    with pytest.raises(openai.BadRequestError):
        _client(keyed_server).realtime.client_secrets.create(
            expires_after={"anchor": "created_at", "seconds": 5}
        )


async def test_an_sdk_session_opened_with_a_secret_starts_as_minted(
    keyed_server: RunningServer, slot_calls: list[tuple[Any, ...]]
) -> None:
    value = _mint(keyed_server)
    client = AsyncOpenAI(api_key=value, websocket_base_url=keyed_server.ws_base)
    # The URL names another model: the secret's wins.
    async with client.realtime.connect(model="moshi-sft") as conn:
        created: Any = await asyncio.wait_for(conn.recv(), 10)
        assert created.type == "session.created", created
        assert created.session.model == PERSONA
        assert created.session.instructions == "You are a pirate."
        assert created.session.audio.output.voice == "VARF2"
        assert created.session.audio.input.turn_detection is None
        chunk = encode_base64(to_pcm16(speech_like(0.08 * 3, seed=3)))
        await conn.input_audio_buffer.append(audio=chunk)
        deadline = time.monotonic() + 10
        while ("send_audio",) not in slot_calls:
            assert time.monotonic() < deadline, slot_calls
            await asyncio.sleep(0.05)
    # The minted persona prompted the model ahead of its first audio.
    assert slot_calls[0] == ("set_persona", Persona("VARF2", "You are a pirate."))


async def test_a_browser_passes_a_secret_as_its_subprotocol(keyed_server: RunningServer) -> None:
    value = _mint(keyed_server)
    url = f"ws://{keyed_server.host}/v1/realtime"
    async with websockets.connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{value}"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "realtime"
        event = await _next_event(ws)
        assert event["type"] == "session.created" and event["session"]["instructions"] == "You are a pirate."


async def test_expired_and_tampered_secrets_are_refused_on_the_socket(keyed_server: RunningServer) -> None:
    server = keyed_server.config.server
    expired = mint(
        session=SESSION,
        model=PERSONA,
        minted_by=key_id(KEY, server),
        expires_at=int(time.time()) - 1,
        settings=server,
    )
    for browser in (False, True):
        event = await _refused(keyed_server.host, expired, browser=browser)
        assert event["error"]["code"] == "invalid_api_key" and "expired" in event["error"]["message"]
    value = _mint(keyed_server)
    tampered = value.replace(".", ".A", 1)
    event = await _refused(keyed_server.host, tampered)
    assert event["error"]["code"] == "invalid_api_key" and "expired" not in event["error"]["message"]


async def test_a_restarted_ingress_honours_secrets_minted_before_unless_the_signing_key_changed(
    keyed_server: RunningServer,
) -> None:
    value = _mint(keyed_server)
    with another_ingress(keyed_server, _config()) as host:
        async with websockets.connect(
            f"ws://{host}/v1/realtime", additional_headers={"Authorization": f"Bearer {value}"}
        ) as ws:
            event = await _next_event(ws)
            assert event["type"] == "session.created" and event["session"]["model"] == PERSONA
    with another_ingress(keyed_server, _config(client_secret_signing_key="rotated")) as host:
        event = await _refused(host, value)
        assert event["error"]["code"] == "invalid_api_key"


async def test_secret_sessions_count_against_the_key_that_minted_them(keyed_server: RunningServer) -> None:
    url = f"ws://{keyed_server.host}/v1/realtime?model={PERSONA}"
    first, second = _mint(keyed_server), _mint(keyed_server)  # max_sessions_per_key is 2
    direct = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {KEY}"})
    by_secret = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {first}"})
    try:
        for ws in (direct, by_secret):
            assert (await _next_event(ws))["type"] == "session.created"
        event = await _refused(keyed_server.host, second)
        assert event["error"]["code"] == "too_many_sessions"
        # Another key's count is its own.
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {OTHER_KEY}"}) as ws:
            assert (await _next_event(ws))["type"] == "session.created"
    finally:
        await direct.close()
        await by_secret.close()
