"""The API's error shape and the exception handlers that keep every refusal a 4xx naming the field (and a
storage outage a 503, never a 500). Which requests reach a route at all: :mod:`shared.api_guard`."""

from __future__ import annotations

import contextlib

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException


class ErrorItem(BaseModel):
    loc: str
    msg: str


class ErrorBody(BaseModel):
    detail: str
    errors: list[ErrorItem] = Field(default_factory=list)


def error_response(status: int, detail: str, errors: list[dict[str, str]] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail, "errors": errors or []})


def install_error_handlers(app: FastAPI) -> None:
    """Validation errors in the API's shape, HTTP errors with ``errors``, storage outages as 503."""
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ConnectionError, _store_unavailable)
    with contextlib.suppress(ImportError):  # the Azure adapters' transport errors (azure-core)
        from azure.core.exceptions import ServiceRequestError, ServiceResponseError

        app.add_exception_handler(ServiceRequestError, _store_unavailable)
        app.add_exception_handler(ServiceResponseError, _store_unavailable)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's validation errors (path, query, headers) in the API's error shape: ``loc`` names the field."""
    errors = [
        {"loc": ".".join(str(part) for part in error.get("loc", ())), "msg": str(error.get("msg", ""))}
        for error in getattr(exc, "errors", list)()
    ]
    fields = ", ".join(e["loc"] for e in errors)
    return error_response(422, f"invalid request: {fields}", errors)


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The store could not be reached (after the SDK's retries): 503 with Retry-After, not a 500."""
    response = error_response(503, f"storage unavailable, try again: {type(exc).__name__}")
    response.headers["Retry-After"] = "1"
    return response


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    status, detail, loc = getattr(exc, "status_code", 500), str(getattr(exc, "detail", "")), getattr(exc, "loc", "")
    response = error_response(status, detail, [{"loc": loc, "msg": detail}] if loc else None)
    for name, value in (getattr(exc, "headers", None) or {}).items():
        response.headers[name] = value
    return response
