"""The API's side of authentication: who the request is from (:func:`caller`), the role each route needs
(:func:`require`), and which experiments a caller may see, cancel and download.

Routes declare ``caller: Annotated[Principal, require(Role.X, "doing y")]``; FastAPI resolves the caller
once per request. A 401 carries ``WWW-Authenticate: Bearer error=...`` (RFC 6750); a 403 names the missing
role or the ownership rule. An experiment a caller may not see answers 404, like one that does not exist,
so ids cannot be probed.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from html import escape
from typing import Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from shared.auth.easyauth import HEADER, principal_from_header
from shared.auth.principal import KEY_HOLDER, AuthError, Principal, Role
from shared.auth.settings import AuthSettings
from shared.auth.tokens import TokenValidator
from shared.ports import Store
from shared.records import ExperimentRecord, ExperimentStatus, UnreadableRecord

MAX_SCANNED_PAGES = 10
"""Store pages one listing may read to find a caller's own experiments (a page may come back short)."""


class Authenticator:
    """The request's principal, as the deployment's :class:`AuthSettings` say to establish it."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.tokens = TokenValidator(settings) if settings.mode == "entra" and not settings.easy_auth else None

    def principal(self, headers: Mapping[str, str]) -> Principal:
        reads_header = self.settings.mode == "entra" and self.settings.easy_auth
        if HEADER in headers and not reads_header:
            raise AuthError(
                401,
                "X-MS-CLIENT-PRINCIPAL refused: App Service authentication is not in front of this app, "
                "so the header was not set by the platform",
                error="invalid_request",
            )
        if self.settings.mode == "key":
            return KEY_HOLDER
        if reads_header:
            value = headers.get(HEADER)
            if value is None:
                raise AuthError(
                    401, "no Entra ID sign-in: App Service authentication passed the request on without a principal"
                )
            return principal_from_header(value, self.settings)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(
                401,
                "send an Entra ID access token for this API: Authorization: Bearer <token>",
                error="invalid_request",
            )
        assert self.tokens is not None
        return self.tokens.principal(token.strip())


def install_auth(app: FastAPI, settings: AuthSettings) -> None:
    app.state.authenticator = Authenticator(settings)
    app.add_exception_handler(AuthError, _refused)


BROWSER_PAGES = ("/api/ui", "/api/docs")
"""Paths a person opens in a browser: a 401 there is a sign-in path, not a JSON body."""
LOGIN_PATH = "/.auth/login/aad"
"""App Service authentication's sign-in for Entra ID; ``post_login_redirect_uri`` brings the browser back."""


def wants_page(request: Request) -> bool:
    """A browser navigating to a dashboard or docs page (not a script or a client asking for JSON)."""
    path = request.url.path
    on_page = any(path == prefix or path.startswith(prefix + "/") for prefix in BROWSER_PAGES)
    return on_page and "text/html" in request.headers.get("accept", "") and request.method in {"GET", "HEAD"}


def sign_in_answer(request: Request, exc: AuthError) -> Response:
    """A browser's 401 on a page: with Easy Auth in front, a redirect to its Entra sign-in that comes back to
    this page (a path of this app only: no open redirect); without it, a page saying how to get in."""
    settings = settings_of(request)
    if settings.mode == "entra" and settings.easy_auth:
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{LOGIN_PATH}?{urlencode({'post_login_redirect_uri': back})}", status_code=302)
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign-in needed · rapids-hpo</title>'
        "</head><body><h1>Sign-in needed (401)</h1>"
        f"<p id=reason>{escape(exc.message)}</p><p>The dashboard needs your Entra ID sign-in, which a browser "
        "can make only through App Service authentication in front of this app (deploy with "
        "<code>authMode=entraId</code> and <code>dashboardSignIn=true</code>). Here the app validates bearer "
        "tokens itself, which a browser does not send: use the CLI (<code>az login</code>, then "
        "<code>rapids-hpo list</code>, <code>status</code>, <code>watch</code> with "
        "<code>RAPIDS_HPO_API_SCOPE</code> set) or call the API with a token.</p></body></html>"
    )
    headers = {"Cache-Control": "no-store", "Content-Security-Policy": "default-src 'none'", **_challenge(exc)}
    return HTMLResponse(body, status_code=401, headers=headers)


def _challenge(exc: AuthError) -> dict[str, str]:
    description = exc.message.replace('"', "'")
    return {"WWW-Authenticate": f'Bearer error="{exc.error}", error_description="{description}"'}


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AuthError)
    if exc.status == 401 and wants_page(request):
        return sign_in_answer(request, exc)
    response = JSONResponse(
        status_code=exc.status,
        content={"detail": exc.message, "errors": [{"loc": "header.authorization", "msg": exc.message}]},
    )
    if exc.status == 401:
        response.headers.update(_challenge(exc))
    elif exc.status == 503:
        response.headers["Retry-After"] = "5"
    return response


def settings_of(request: Request) -> AuthSettings:
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator.settings


async def caller(request: Request) -> Principal:
    """The authenticated caller (bearer validation may fetch keys: it runs in the thread pool)."""
    authenticator: Authenticator = request.app.state.authenticator
    if authenticator.tokens is not None:
        return await run_in_threadpool(authenticator.principal, request.headers)
    return authenticator.principal(request.headers)


def require(role: Role, doing: str) -> Any:
    """``Depends`` on the caller holding ``role`` (or ``Experiments.Admin``); a 403 names the role."""

    async def dependency(principal: Principal = Depends(caller)) -> Principal:  # noqa: B008 (FastAPI idiom)
        principal.require(role, doing)
        return principal

    check: Callable[..., Coroutine[Any, Any, Principal]] = dependency
    return Depends(check)


def sees_all(principal: Principal, settings: AuthSettings) -> bool:
    return principal.has(Role.ADMIN) or settings.readers_see == "all"


def check_visible(principal: Principal, settings: AuthSettings, record: ExperimentRecord) -> ExperimentRecord:
    """``record`` if the caller may see it; else the 404 an unknown id gets."""
    if sees_all(principal, settings) or principal.owns(record.submitted_by):
        return record
    raise HTTPException(404, f"experiment {record.id!r} not found")


def check_owner(principal: Principal, record: ExperimentRecord, doing: str) -> None:
    """Cancelling and downloading the model need the experiment to be the caller's, or the admin role."""
    if not (principal.has(Role.ADMIN) or principal.owns(record.submitted_by)):
        raise AuthError(403, f"{doing} needs ownership of experiment {record.id!r} or the app role {Role.ADMIN.value}")


def visible_page(
    store: Store,
    principal: Principal,
    settings: AuthSettings,
    *,
    status: ExperimentStatus | None,
    limit: int,
    page_token: str | None,
) -> tuple[list[ExperimentRecord | UnreadableRecord], str | None]:
    """One page of the experiments the caller may see, newest first. A caller who sees only their own gets
    the first store page holding any of theirs (scanning at most :data:`MAX_SCANNED_PAGES`): a page may
    hold fewer than ``limit`` items, or none, with a ``next_page_token`` to go on from. A record the store
    cannot read (``UnreadableRecord``) names no owner: only a caller who sees all sees it."""
    records, token = store.list_experiments(status=status, limit=limit, page_token=page_token)
    if sees_all(principal, settings):
        return records, token
    for scanned in range(1, MAX_SCANNED_PAGES + 1):
        mine: list[ExperimentRecord | UnreadableRecord] = [
            record for record in records if isinstance(record, ExperimentRecord) and principal.owns(record.submitted_by)
        ]
        if mine or token is None or scanned == MAX_SCANNED_PAGES:
            return mine, token
        records, token = store.list_experiments(status=status, limit=limit, page_token=token)
    raise AssertionError("unreachable")
