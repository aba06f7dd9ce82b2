"""A local stand-in for an Event Grid topic: a plain HTTP server on 127.0.0.1 that checks what the
real topic checks of a CloudEvents publish (path, ``api-version``, ``aeg-sas-key``, content type, a
JSON array of CloudEvents 1.0) and records each accepted batch.

Faults are scripted: ``fail(n, status)`` answers the next ``n`` publishes with ``status`` without
keeping them; ``fail(n, status, keep=True)`` keeps them and still answers ``status`` (the topic took
the batch but the answer was lost, so the publisher sends it again); ``stop()`` closes the port
(connection refused) and ``start()`` opens it again on the same port.

With ``token`` set it stands in for a topic reached with a managed identity: it requires
``Authorization: Bearer <token>`` instead of the key, and with ``tls`` (certificate and key files) it
serves HTTPS, which the SDK's bearer-token policy insists on.
"""

from __future__ import annotations

import json
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API_VERSION = "2018-01-01"
PATH = "/api/events"
REQUIRED = ("specversion", "id", "source", "type")


@dataclass
class Fault:
    remaining: int
    status: int
    keep: bool


@dataclass
class TopicReceiver:
    key: str = "local-topic-key"
    token: str | None = None
    tls: tuple[str, str] | None = None
    port: int = 0
    batches: list[list[dict[str, Any]]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{PATH}"

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every accepted event, in the order received (duplicates included)."""
        with self._lock:
            return [event for batch in self.batches for event in batch]

    def fail(self, times: int, status: int = 500, *, keep: bool = False) -> None:
        with self._lock:
            self.faults.append(Fault(times, status, keep))

    def start(self) -> TopicReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                status, body = receiver._handle(self)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _handle(self, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, Any]]:
        url = urlsplit(request.path)
        length = int(request.headers.get("content-length") or 0)
        raw = request.rfile.read(length)
        with self._lock:
            self.requests.append({"path": url.path, "query": url.query, "headers": dict(request.headers)})
        if url.path != PATH:
            return 404, _error("NotFound", url.path)
        if parse_qs(url.query).get("api-version") != [API_VERSION]:
            return 400, _error("BadRequest", "api-version")
        if self.token is not None:
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return 401, _error("Unauthorized", "authorization")
        elif request.headers.get("aeg-sas-key") != self.key:
            return 401, _error("Unauthorized", "aeg-sas-key")
        if not (request.headers.get("content-type") or "").startswith("application/cloudevents-batch+json"):
            return 400, _error("BadRequest", "content-type")
        try:
            batch = json.loads(raw)
        except ValueError:
            return 400, _error("BadRequest", "body is not JSON")
        if not isinstance(batch, list) or not all(
            isinstance(e, dict) and e.get("specversion") == "1.0" and all(e.get(k) for k in REQUIRED) for e in batch
        ):
            return 400, _error("BadRequest", "not a CloudEvents 1.0 batch")
        with self._lock:
            if self.faults:
                fault = self.faults[0]
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.faults.pop(0)
                if fault.keep:
                    self.batches.append(batch)
                return fault.status, _error("Scripted", str(fault.status))
            self.batches.append(batch)
        return 200, {}


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
