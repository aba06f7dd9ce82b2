"""One log line per HTTP request for ``rapids-hpo serve``: method, path, status and milliseconds.

uvicorn's own access log prints the query string, and the dashboard's links carry the key there
(``?code=``); this line never does, nor any header (``x-functions-key``, ``Authorization``). The path is
logged as the client sent it, cut at :data:`MAX_PATH_CHARS` and with control characters escaped, so a
hostile path can neither flood nor forge the log. A pure ASGI wrapper: streamed bodies are timed to their
last byte, and nothing is buffered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger("rapids_hpo.access")

MAX_PATH_CHARS = 200

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def log_to_stderr() -> None:
    """Print this module's lines on stderr with a timestamp (``serve`` calls it once)."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def safe_path(path: str) -> str:
    """``path`` as one printable line of at most :data:`MAX_PATH_CHARS` (no query: it is not passed here)."""
    shown = path.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= MAX_PATH_CHARS else shown[: MAX_PATH_CHARS - 1] + "…"


class AccessLog:
    """Wraps an ASGI app; logs ``GET /api/experiments 200 12.3ms`` at INFO when each response ends (a
    response that never started, the app having raised, is logged as 500 and the error re-raised)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            ms = (time.perf_counter() - started) * 1000
            method = safe_path(str(scope.get("method", "?")))[:16]
            log.info("%s %s %d %.1fms", method, safe_path(str(scope.get("path", ""))), status, ms)
