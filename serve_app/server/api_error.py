"""An HTTP endpoint's refusal in OpenAI's shape (`{"error": {message, type, code, param}}`), one type for
every non-WebSocket route: client secrets, WebRTC calls and their hangups."""

from __future__ import annotations

from starlette.responses import JSONResponse

from serve_app.protocol.errors import CLIENT_ERROR, SERVER_ERROR
from serve_app.protocol.json_object import JsonObject


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param

    def body(self) -> JsonObject:
        kind = CLIENT_ERROR if self.status < 500 else SERVER_ERROR
        return {"error": {"message": self.message, "type": kind, "code": self.code, "param": self.param}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)
