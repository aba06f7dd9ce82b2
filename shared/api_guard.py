"""The web edge: which requests reach the API at all, checked before any route runs (pure ASGI).

A browser on the user's machine will send requests to ``http://127.0.0.1:7071`` for any page it shows;
the rules below make that useless to a page that is not this server's own:

1. **Host** (421): the ``Host`` header names this server: a loopback name or address, the host ``serve``
   bound, a host of ``RAPIDS_HPO_ALLOWED_HOSTS``, or in Azure the Function App's own (``WEBSITE_HOSTNAME``).
   A page that rebinds its DNS name to 127.0.0.1 still sends its own name: refused (DNS rebinding).
2. **Origin** (403): a state-changing request (POST, PUT, PATCH, DELETE) that a browser marks
   ``Sec-Fetch-Site: cross-site|same-site``, or whose ``Origin`` is not this server's, is refused. Another
   port of 127.0.0.1 is the same *site* but another origin: refused too.
3. **Key** (401, when there is one): ``x-functions-key`` or ``?code=``, as the Functions host asks in Azure
   (where the host checks it, and this app has none).
4. **Document** (415): a POST, PUT or PATCH, and a DELETE with a body, carries JSON or YAML: no form or
   ``text/plain`` body, the only ones a cross-site page may send without asking first (CORS).

Reads are not refused by origin: they change nothing, and no CORS header lets another origin read them.
Every refusal is the API's error body, naming the header in ``errors[].loc``.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from shared.api_edge import error_response
from shared.config import Settings

FUNCTION_KEY_HEADER = "x-functions-key"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DOCUMENT_TYPES = frozenset({"application/json", "application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
"""Media types of a spec document; none is one a cross-site page may send without a CORS preflight."""
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})  # the usual spellings, without parsing
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

Refusal = tuple[int, str, str]
"""``(status, loc, message)``."""


def _host_name(value: str) -> str:
    """The host part of a ``Host`` header or a bound host, lower-cased, without port or trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (a name that resolves there, but is not one of these, is not)."""
    name = _host_name(host)
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_and_port(netloc: str, scheme: str) -> tuple[str, int | None]:
    """``(host, port)`` of ``host[:port]``, the scheme's default port when none is given."""
    parts = urlsplit(f"//{netloc}")
    try:
        port = parts.port
    except ValueError:
        return netloc, None
    return (parts.hostname or "").rstrip("."), port or _DEFAULT_PORTS.get(scheme)


@dataclass(frozen=True)
class EdgePolicy:
    """What the edge trusts: host names beside loopback, and the key (``None``: the Functions host checks it)."""

    hosts: frozenset[str] = frozenset()
    key: str | None = None

    @classmethod
    def of(cls, settings: Settings, *, bound_host: str | None = None, key: str | None = None) -> EdgePolicy:
        """Loopback, the configured hosts, and ``bound_host`` unless it is every interface (0.0.0.0, ::)."""
        hosts = {_host_name(h) for h in settings.trusted_hosts}
        if bound_host is not None and bound_host.strip("[]") not in WILDCARD_HOSTS:
            hosts.add(_host_name(bound_host))
        return cls(hosts=frozenset(hosts), key=key or None)

    def trusts_host(self, host: str) -> bool:
        return bool(host.strip()) and "," not in host and (is_loopback(host) or _host_name(host) in self.hosts)

    def refusal(self, method: str, headers: dict[str, list[str]], query: str) -> Refusal | None:
        """Why this request must not reach a route, or ``None``; the rules in the module's order."""
        hosts = headers.get("host", [])
        if len(hosts) != 1 or not self.trusts_host(hosts[0]):
            shown = hosts[0][:80] if hosts else ""
            return 421, "header.host", f"this server does not answer to the host {shown!r}"
        if method in STATE_CHANGING and not self._same_origin(hosts[0], headers):
            return 403, "header.origin", "a state-changing request must come from this server's own pages"
        if self.key is not None and not self._has_key(headers, query):
            return 401, f"header.{FUNCTION_KEY_HEADER}", f"missing or wrong key: send it in {FUNCTION_KEY_HEADER}"
        if method in STATE_CHANGING and (method != "DELETE" or _has_body(headers)):
            media = (headers.get("content-type") or [""])[0].split(";", 1)[0].strip().lower()
            if media not in DOCUMENT_TYPES:
                allowed = ", ".join(sorted(DOCUMENT_TYPES))
                return 415, "header.content-type", f"the body must be a JSON or YAML document ({allowed})"
        return None

    @staticmethod
    def _same_origin(host: str, headers: dict[str, list[str]]) -> bool:
        """Not marked cross-site or same-site, and each ``Origin`` names this host and port. The scheme is
        not compared (behind Azure's front end the app may see ``http`` for an ``https`` page); a port left
        out of ``Host`` is the origin scheme's default."""
        if any(site.strip().lower() in {"cross-site", "same-site"} for site in headers.get("sec-fetch-site", [])):
            return False
        for origin in headers.get("origin", []):
            parts = urlsplit(origin.strip().lower())
            if parts.scheme not in _DEFAULT_PORTS:  # "null" (a sandboxed frame, a data: page) or garbage
                return False
            if _host_and_port(parts.netloc, parts.scheme) != _host_and_port(host.lower(), parts.scheme):
                return False
        return True

    def _has_key(self, headers: dict[str, list[str]], query: str) -> bool:
        expected = (self.key or "").encode()
        sent = headers.get(FUNCTION_KEY_HEADER, [])
        if any(hmac.compare_digest(value.encode(), expected) for value in sent):
            return True
        return "code=" in query and any(
            hmac.compare_digest(value.encode(), expected) for value in parse_qs(query).get("code", [])
        )


def _has_body(headers: dict[str, list[str]]) -> bool:
    length = (headers.get("content-length") or ["0"])[0].strip()
    return bool(headers.get("transfer-encoding")) or not length.isdigit() or int(length) > 0


Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, value in raw:
        headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return headers


class EdgeGuard:
    """ASGI middleware applying an :class:`EdgePolicy` to every HTTP request (a refusal never reaches a route)."""

    def __init__(self, app: ASGIApp, policy: EdgePolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = _headers(scope.get("headers", []))
            server = scope.get("server")
            if "host" not in headers and server:  # ASGI: without a Host header, the server's address stands
                name = f"[{server[0]}]" if ":" in str(server[0]) else str(server[0])
                headers["host"] = [name if server[1] is None else f"{name}:{server[1]}"]
            refusal = self.policy.refusal(
                scope["method"].upper(),
                headers,
                scope.get("query_string", b"").decode("latin-1"),
            )
            if refusal is not None:
                status, loc, msg = refusal
                await error_response(status, msg, [{"loc": loc, "msg": msg}])(scope, receive, send)
                return
        await self.app(scope, receive, send)
