"""The browser demo: `/` serves `serve_app/web/index.html`, `/web/*` its scripts, worklets and style.

Plain files, no build step; they ship as package data (pyproject.toml). The routes go last in the app so
they never shadow the API.
"""

from __future__ import annotations

import os
from pathlib import PurePath

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from starlette.types import Scope

WEB_PACKAGE = ("serve_app", "web")

# Not mimetypes: it reads /etc/mime.types, and some systems map .js to something a browser refuses
# for a module script or an AudioWorklet (which insist on a JavaScript MIME type).
MEDIA_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
}


class DemoFiles(StaticFiles):
    """StaticFiles with fixed content types, revalidated on every load (the demo changes under a running
    server while someone develops it; ETags keep that cheap), and no content sniffing."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        media_type = MEDIA_TYPES.get(PurePath(full_path).suffix, "application/octet-stream")
        response = FileResponse(
            full_path,
            status_code=status_code,
            stat_result=stat_result,
            media_type=media_type,
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )
        if self.is_not_modified(response.headers, Headers(scope=scope)):
            return NotModifiedResponse(response.headers)
        return response


def web_routes() -> list[BaseRoute]:
    """`/` and `/web/*`; append them after the API routes."""
    files = DemoFiles(packages=[WEB_PACKAGE])

    async def index(request: Request) -> Response:
        return await files.get_response("index.html", request.scope)

    return [Route("/", index, methods=["GET", "HEAD"]), Mount("/web", app=files, name="web")]
