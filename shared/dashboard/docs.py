"""The OpenAPI document and the interactive docs (Swagger UI), both behind the reader role.

Swagger UI's script and stylesheet are served from the ``fastapi-offline`` package (PyPI, MIT, Swagger UI
5, which reads OpenAPI 3.1), never from a CDN: the page works offline and under a CSP that allows nothing
but this origin. The page's one inline script runs by this response's nonce and fetches the document with
the key (``?code=``), as every dashboard link passes it on. With Entra ID, the document and the page need
``Experiments.Read`` like every other read (the asset files are the library's own code, the same for all).
"""

from __future__ import annotations

import importlib.util
import secrets
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from shared.auth import Principal, Role, require
from shared.dashboard.pages import url
from shared.dashboard.routes import page_headers

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
"""The files of ``fastapi_offline/static`` this app serves, and their media types."""

router = APIRouter(prefix="/api")
Code = Annotated[str | None, Query(max_length=512, description="the Functions key, passed on in links")]
Reader = Annotated[Principal, require(Role.READ, "reading the API's documentation")]


def assets_folder() -> FilePath:
    """Where the installed ``fastapi-offline`` keeps Swagger UI (found without importing the package)."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        raise HTTPException(503, "the interactive docs need the fastapi-offline package (pip install fastapi-offline)")
    return FilePath(spec.origin).parent / "static"


@router.get("/openapi.json", include_in_schema=False)
def openapi_document(request: Request, caller: Reader) -> JSONResponse:
    """The OpenAPI document (FastAPI builds it once and keeps it)."""
    document: dict[str, Any] = request.app.openapi()
    return JSONResponse(document)


@router.get("/docs", include_in_schema=False)
def api_docs(caller: Reader, code: Code = None) -> HTMLResponse:
    """Swagger UI from this app's own assets, its inline script by nonce, the document fetched with the key."""
    from fastapi.openapi.docs import get_swagger_ui_html

    nonce = secrets.token_urlsafe(18)
    page = bytes(
        get_swagger_ui_html(
            openapi_url=url("/api/openapi.json", code),  # urlencoded: nothing of `code` can end the script's string
            title="rapids-hpo-control API",
            swagger_js_url=url("/api/docs/assets/swagger-ui-bundle.js", code),
            swagger_css_url=url("/api/docs/assets/swagger-ui.css", code),
            swagger_favicon_url=url("/api/docs/assets/favicon.png", code),
        ).body
    ).decode()
    page = page.replace("<script>", f'<script nonce="{nonce}">')
    headers = page_headers(nonce)
    headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'nonce-{nonce}' 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    )
    return HTMLResponse(page, headers=headers)


@router.get("/docs/assets/{name}", include_in_schema=False)
def docs_asset(name: Annotated[str, Path(max_length=32)]) -> Response:
    """One of :data:`ASSETS` (any other name is a 404, never a path into the package)."""
    if name not in ASSETS:
        raise HTTPException(404, f"no docs asset {name!r}")
    data = (assets_folder() / name).read_bytes()
    headers = {"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"}
    return Response(data, media_type=ASSETS[name], headers=headers)
