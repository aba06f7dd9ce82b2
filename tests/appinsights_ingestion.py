"""A stand-in for Application Insights' ingestion endpoint with local authentication disabled (as infra/
deploys the component: ``DisableLocalAuth``), and for the App Service managed-identity token endpoint the
Function App's credential asks. Both unreachable here; the distro, its exporter and azure-identity are the
real ones.

* ``POST /v2.1/track`` over TLS (a bearer token is never sent over plain http): 401 without
  ``Authorization: Bearer <a token this stand-in issued for https://monitor.azure.com>``, as the service
  refuses the instrumentation key alone; else the envelopes (JSON, gzip or not) are kept and acknowledged in
  the service's answer shape (``itemsReceived``, ``itemsAccepted``, ``errors``).
* the managed-identity token endpoints (:data:`MI_PROTOCOLS`): App Service's (``IDENTITY_ENDPOINT`` /
  ``IDENTITY_HEADER``), a VM's IMDS (``/metadata/identity/oauth2/token`` with ``Metadata: true``; azure-identity
  reaches it through ``AZURE_POD_IDENTITY_AUTHORITY_HOST``) and AzureML's (``MSI_ENDPOINT`` / ``MSI_SECRET``):
  a token for the identity the request names (its client id), recorded. With ``publishers`` set, ingestion
  takes only tokens of those identities (the ones infra/ grants Monitoring Metrics Publisher on the
  component): another identity's token is refused as the service refuses it.
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


@dataclass(frozen=True)
class Protocol:
    """One managed-identity token protocol: the header that proves the caller is on the host, and the query
    parameter naming a user-assigned identity."""

    header: str
    expected: str  # "secret": the stand-in's identity_header; else the literal value
    client_id_param: str

    def authorized(self, headers: Any, stand_in: Ingestion) -> bool:
        wanted = stand_in.identity_header if self.expected == "secret" else self.expected
        return bool(headers.get(self.header) == wanted)


MI_PROTOCOLS = {
    "/msi/token": Protocol("X-IDENTITY-HEADER", "secret", "client_id"),  # App Service (2019-08-01)
    "/metadata/identity/oauth2/token": Protocol("Metadata", "true", "client_id"),  # a VM's IMDS (2018-02-01)
    "/msi/azureml": Protocol("secret", "secret", "clientid"),  # AzureML compute (2017-09-01)
}


@dataclass
class Ingestion:
    folder: Path
    envelopes: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    refusals: list[tuple[str, str]] = field(default_factory=list)
    identity_header: str = field(default_factory=lambda: secrets.token_hex(8))
    tokens: dict[str, str] = field(default_factory=dict)
    """Tokens issued for the monitor audience -> the client id of the identity they were issued to."""
    token_requests: list[tuple[str, str]] = field(default_factory=list)
    publishers: frozenset[str] | None = None
    """Client ids holding Monitoring Metrics Publisher on the component (None: any identity's token)."""
    system_identity: str = "system-assigned"

    def may_publish(self, bearer: str) -> bool:
        """The service accepts a token of an identity with the role on the component, nothing else."""
        client_id = self.tokens.get(bearer)
        return client_id is not None and (self.publishers is None or client_id in self.publishers)

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

            def do_GET(self) -> None:  # the managed-identity endpoints: App Service's, a VM's IMDS, AzureML's
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                protocol = MI_PROTOCOLS.get(url.path)
                if protocol is None or not protocol.authorized(self.headers, stand_in):
                    self._answer(400, {"error": "bad request"})
                    return
                resource = query.get("resource", "")
                client_id = query.get(protocol.client_id_param, stand_in.system_identity)
                token = secrets.token_urlsafe(24)
                if resource.rstrip("/") == MONITOR_AUDIENCE:
                    stand_in.tokens[token] = client_id
                    stand_in.token_requests.append((url.path, client_id))
                expires = int(time.time()) + 3600
                self._answer(
                    200,
                    {
                        "access_token": token,
                        "expires_on": str(expires),
                        "expires_in": "3600",
                        "resource": resource,
                        "token_type": "Bearer",
                    },
                )

            def do_POST(self) -> None:  # ingestion
                data = self.rfile.read(int(self.headers.get("content-length") or 0))
                bearer = (self.headers.get("authorization") or "").removeprefix("Bearer ")
                if not self.path.startswith("/v2.1/track") or not stand_in.may_publish(bearer):
                    stand_in.refusals.append((self.path, bearer[:8]))
                    stand_in.refused += 1  # 403: a valid token of an identity without the role; else 401
                    self._answer(403 if bearer in stand_in.tokens else 401, {"itemsReceived": 0, "errors": []})
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

    @property
    def imds_host(self) -> str:
        """For ``AZURE_POD_IDENTITY_AUTHORITY_HOST``: azure-identity's IMDS authority (a VM's identity)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def azureml_endpoint(self) -> str:
        """``MSI_ENDPOINT`` on an AzureML compute (with ``MSI_SECRET``: :attr:`identity_header`)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/msi/azureml"

    def stop(self) -> None:
        for server in (self._server, self._https):
            server.shutdown()
            server.server_close()
