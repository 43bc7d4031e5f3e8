"""HTTP routes of WebRTC calls: `POST /v1/realtime/calls` (201, the SDP answer, `Location`) and
`POST /v1/realtime/calls/{call_id}/hangup`; the sideband socket (`/v1/realtime?call_id=`) is routed
from the realtime WebSocket route (`sideband`). Errors are OpenAI-shaped JSON bodies."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from serve_app.protocol.errors import WS_1008_POLICY_VIOLATION
from serve_app.server.api_error import ApiError
from serve_app.webrtc.calls import HANGUP_WAIT_S, Calls, key_allowed
from serve_app.webrtc.owners import INGRESS_HEADER, OwnerPort
from serve_app.webrtc.relay import forward_hangup, relay_sideband
from serve_app.webrtc.sdp_offer import OfferError, parse_offer

CALLS_PATH = "/v1/realtime/calls"


def error_response(status: int, code: str, message: str, param: str | None = None) -> JSONResponse:
    return ApiError(status, code, message, param).response()


def call_routes(calls: Calls) -> list[Route]:
    async def create(request: Request) -> Response:
        try:
            offer = parse_offer(request.headers.get("content-type", ""), await request.body())
            headers = {k.lower(): v for k, v in request.headers.items()}
            call_id, answer = await calls.create(offer, headers, request.query_params.get("model"))
        except OfferError as exc:
            return exc.response()
        response = Response(
            answer,
            status_code=201,
            media_type="application/sdp",
            headers={"Location": f"{CALLS_PATH}/{call_id}"},
        )
        return _named(calls, response)

    async def hangup(request: Request) -> Response:
        return _named(calls, await hangup_call(calls, request, forward=True))

    return [
        Route(CALLS_PATH, create, methods=["POST"]),
        Route(CALLS_PATH + "/{call_id}/hangup", hangup, methods=["POST"]),
    ]


async def hangup_call(calls: Calls, request: Request, *, forward: bool) -> Response:
    """`forward`: a call another ingress replica holds is hung up there (never from its private port)."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    query = dict(request.query_params)
    if not key_allowed(calls.config, headers, query):
        return error_response(401, "invalid_api_key", "Incorrect or missing API key.")
    call_id = request.path_params["call_id"]
    address = await calls.elsewhere(call_id) if forward else None
    if address is not None:
        path = f"{CALLS_PATH}/{call_id}/hangup"
        answer = await forward_hangup(address, path, headers, query, HANGUP_WAIT_S + 5)
        if answer is not None:
            return answer
    elif await calls.hangup(call_id):
        return Response(status_code=200)
    return error_response(404, "call_not_found", f"No call {call_id!r} on this server.", "call_id")


async def sideband(calls: Calls, ws: WebSocket, *, forward: bool = True) -> None:
    """`/v1/realtime?call_id=rtc_…`: join the call's event stream (it does not own the call); relayed to
    the replica that holds the call when that is another one."""
    headers = {k.lower(): v for k, v in ws.headers.items()}
    subprotocols = list(ws.scope.get("subprotocols") or [])
    if not key_allowed(calls.config, headers, dict(ws.query_params), subprotocols):
        await ws.close(code=WS_1008_POLICY_VIOLATION)  # before accept: the handshake is refused (403)
        return
    call_id = ws.query_params["call_id"]
    address = await calls.elsewhere(call_id) if forward else None
    if address is not None:
        query = ws.scope.get("query_string", b"").decode("latin-1")
        relayed = await relay_sideband(
            ws, address, f"/v1/realtime?{query}", headers, subprotocols, calls.ingress_headers()
        )
        if not relayed:  # the owner is gone
            await calls.not_found(call_id, ws, subprotocols)
        return
    await calls.join(call_id, ws, subprotocols)


def owner_routes(calls: Calls) -> list[Route | WebSocketRoute]:
    """What the private port serves: hangup and sideband for this replica's own calls only."""

    async def hangup(request: Request) -> Response:
        return await hangup_call(calls, request, forward=False)

    async def join(ws: WebSocket) -> None:
        if "call_id" not in ws.query_params:
            await ws.close(code=WS_1008_POLICY_VIOLATION)
            return
        await sideband(calls, ws, forward=False)

    return [
        Route(CALLS_PATH + "/{call_id}/hangup", hangup, methods=["POST"]),
        WebSocketRoute("/v1/realtime", join),
    ]


async def open_owner_port(calls: Calls) -> OwnerPort | None:
    """With a directory of owners (several ingress replicas): the private port, published; else None."""
    if calls.owners is None:
        return None
    server = calls.config.server
    app = Starlette(routes=owner_routes(calls))
    port = OwnerPort(app, calls.owners, server.ping_interval_s, server.ping_timeout_s)
    await port.start()
    return port


def _named(calls: Calls, response: Response) -> Response:
    if calls.owner:
        response.headers[INGRESS_HEADER] = calls.owner
    return response
