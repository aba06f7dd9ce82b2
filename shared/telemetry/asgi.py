"""An HTTP request under the Functions host's invocation: the ASGI app sees the host's ``traceparent``
when the request brings none of its own.

FastAPI's request span takes its parent from the request's headers only (``propagate.extract`` into an
empty context), so a request without a ``traceparent`` header started a trace of its own, beside the
host's span for the same execution. ``azure.functions``' ASGI adapter puts the invocation's trace context
(``Context.trace_context``) in the scope as ``azure_functions.trace_context``; this wrapper, outside the
FastAPI app, gives the request that context's ``traceparent`` (and ``tracestate``) header when the request's
own is missing or not a valid W3C version-00 value (strictly parsed: :mod:`shared.telemetry.traceparent`),
so the request span, and the experiment it submits, are children of the host's span. A request's valid
header is kept: the caller's trace goes on. Off (telemetry not configured), and outside the Functions host
(``rapids-hpo serve``: no such scope key), the scope passes unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from shared.telemetry import api
from shared.telemetry.traceparent import parse_traceparent

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
HOST_TRACE_KEY = "azure_functions.trace_context"
_TRACESTATE = re.compile(r"[\x20-\x7e]{1,512}")
"""W3C tracestate: printable ASCII, at most 512 characters kept (the propagator checks its members)."""


def host_traceparent_scope(scope: Scope) -> Scope:
    """``scope`` with the host's trace context as the request's, when the request has no valid one of its
    own and the host gave a valid one; else ``scope`` itself."""
    trace_context = scope.get(HOST_TRACE_KEY)
    host = parse_traceparent(getattr(trace_context, "trace_parent", None))
    headers = list(scope.get("headers") or [])
    own = [value for name, value in headers if name.lower() == b"traceparent"]
    if host is None or (len(own) == 1 and parse_traceparent(own[0].decode("latin-1")) is not None):
        return scope
    kept = [(name, value) for name, value in headers if name.lower() not in (b"traceparent", b"tracestate")]
    kept.append((b"traceparent", host.encode("ascii")))
    state = getattr(trace_context, "trace_state", None)
    if isinstance(state, str) and _TRACESTATE.fullmatch(state):
        kept.append((b"tracestate", state.encode("ascii")))
    return {**scope, "headers": kept}


class HostTraceASGI:
    """Wraps an ASGI app (the FastAPI app ``function_app`` serves): see the module's docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if api.enabled() and scope.get("type") == "http":
            scope = host_traceparent_scope(scope)
        await self.app(scope, receive, send)
