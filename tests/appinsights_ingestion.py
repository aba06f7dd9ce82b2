"""A stand-in for Application Insights' ingestion endpoint with local authentication disabled (as infra/
deploys the component: ``DisableLocalAuth``), and for the App Service managed-identity token endpoint the
Function App's credential asks. Both unreachable here; the distro, its exporter and azure-identity are the
real ones.

* ``POST /v2.1/track`` over TLS (a bearer token is never sent over plain http): 401 without
  ``Authorization: Bearer <a token this stand-in issued for https://monitor.azure.com>``, as the service
  refuses the instrumentation key alone; else the envelopes (JSON, gzip or not) are kept and acknowledged in
  the service's answer shape (``itemsReceived``, ``itemsAccepted``, ``errors``).
* ``GET /msi/token?resource=...&api-version=2019-08-01`` with ``X-IDENTITY-HEADER``: a token (App Service's
  ``IDENTITY_ENDPOINT`` / ``IDENTITY_HEADER`` protocol).
"""

from __future__ import annotations

import gzip
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.tls import mint_certificate

MONITOR_AUDIENCE = "https://monitor.azure.com"


@dataclass
class Ingestion:
    folder: Path
    envelopes: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    identity_header: str = field(default_factory=lambda: secrets.token_hex(8))
    tokens: set[str] = field(default_factory=set)

    def start(self) -> Ingestion:
        cert, key = mint_certificate(self.folder)
        self.ca_file = cert
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # the managed-identity endpoint
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                if url.path != "/msi/token" or self.headers.get("X-IDENTITY-HEADER") != stand_in.identity_header:
                    self._answer(400, {"error": "bad request"})
                    return
                resource = (query.get("resource") or [""])[0]
                token = secrets.token_urlsafe(24)
                if resource.rstrip("/") == MONITOR_AUDIENCE:
                    stand_in.tokens.add(token)
                expires = int(time.time()) + 3600
                self._answer(
                    200,
                    {"access_token": token, "expires_on": str(expires), "resource": resource, "token_type": "Bearer"},
                )

            def do_POST(self) -> None:  # ingestion
                data = self.rfile.read(int(self.headers.get("content-length") or 0))
                bearer = (self.headers.get("authorization") or "").removeprefix("Bearer ")
                if not self.path.startswith("/v2.1/track") or bearer not in stand_in.tokens:
                    stand_in.refused += 1
                    self._answer(401, {"itemsReceived": 0, "itemsAccepted": 0, "errors": []})
                    return
                if self.headers.get("content-encoding") == "gzip":
                    data = gzip.decompress(data)
                items = json.loads(data)
                items = items if isinstance(items, list) else [items]
                stand_in.envelopes.extend(items)
                self._answer(200, {"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._https = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._https.socket = context.wrap_socket(self._https.socket, server_side=True)
        for server in (self._server, self._https):
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    @property
    def ingestion_endpoint(self) -> str:
        return f"https://127.0.0.1:{self._https.server_address[1]}/"

    @property
    def identity_endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/msi/token"

    def stop(self) -> None:
        for server in (self._server, self._https):
            server.shutdown()
            server.server_close()
