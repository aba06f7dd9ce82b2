"""The deployment's container registry as Azure Container Registry answers a VM, over HTTPS on 127.0.0.1.

Its login server is ``127.0.0.1:<port>`` (an image reference ``127.0.0.1:<port>/rapids-hpo@sha256:...`` names it,
as ``<name>.azurecr.io/...`` would), and it plays ACR's token protocol, the one the VM's ``boot.py
--registry-login`` and Docker follow (``https://azure.github.io/acr/AAD-OAuth.html``):

* ``POST /oauth2/exchange`` (form: ``grant_type=access_token``, ``service``, ``access_token``): an Entra token of
  ACR's audience (``https://containerregistry.azure.net``) or ARM's, issued by the instance metadata stand-in
  (:class:`tests.entra_standin.Directory`), becomes an ACR refresh token of that principal; any other token,
  audience or service is 401. As in ACR, the exchange itself checks no role.
* ``POST /oauth2/token`` (form: ``grant_type=refresh_token``, ``service``, ``refresh_token``, ``scope``): an access
  token; ``repository:<repo>:pull`` is granted only if the principal holds
  ``Microsoft.ContainerRegistry/registries/pull/read`` (AcrPull) at the registry's ARM id or above, by an
  assignment in effect (the directory's propagation delay); else the token grants nothing. Without a scope it
  only proves the refresh token (what ``docker login`` checks).
* ``GET /v2/<repo>/manifests/<tag or digest>`` with that token: 401 ``UNAUTHORIZED`` without pull on the
  repository, 404 ``MANIFEST_UNKNOWN`` for a tag or digest never pushed (:meth:`RegistryStandIn.push`), else the
  manifest with its ``Docker-Content-Digest``.

Every refusal is recorded in :attr:`RegistryStandIn.refused`. The VM stand-in's ``docker login``/``docker
pull`` (tests/vm_standin_host.py) speak this protocol to any registry at 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import ssl
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from tests.entra_standin import Directory, _Quiet, _serve

ACR_AUDIENCES = ("https://containerregistry.azure.net", "https://management.azure.com/")
PULL_ACTION = "Microsoft.ContainerRegistry/registries/pull/read"


class RegistryStandIn:
    """ACR for one registry (``registry_id``, its ARM id), TLS with the given certificate and key."""

    def __init__(self, directory: Directory, *, registry_id: str, cert: Path, key: Path) -> None:
        registry = self
        self.directory, self.registry_id = directory, registry_id
        self.manifests: dict[str, dict[str, bytes]] = {}
        """Repository -> digest -> manifest."""
        self.tags: dict[tuple[str, str], str] = {}
        self.refresh_tokens: dict[str, str] = {}
        self.access_tokens: dict[str, set[str]] = {}
        """Access token -> the repositories it may pull."""
        self.refused: list[str] = []
        self.pulled: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                self._reply(*registry.token_endpoint(self.path, form))

            def do_GET(self) -> None:
                auth = self.headers.get("Authorization", "")
                self._reply(*registry.manifest(self.path, auth.removeprefix("Bearer ").strip()))

        self.server = _Quiet(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        _serve(self.server)

    @property
    def login_server(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def push(self, repository: str, tag: str, content: str = "") -> str:
        """Store an image manifest (as ``az acr build`` would) and return its digest, ``sha256:<hex>``."""
        manifest = json.dumps({"schemaVersion": 2, "repository": repository, "tag": tag, "content": content}).encode()
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        self.manifests.setdefault(repository, {})[digest] = manifest
        self.tags[(repository, tag)] = digest
        return digest

    def _refuse(self, status: int, code: str, why: str) -> tuple[int, dict[str, Any]]:
        self.refused.append(f"{code}: {why}")
        return status, {"errors": [{"code": code, "message": why}]}

    def token_endpoint(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("service") != self.login_server:
            return self._refuse(401, "UNAUTHORIZED", f"service {form.get('service')!r} is not this registry")
        if path == "/oauth2/exchange":
            token = form.get("access_token", "")
            principal = self.directory.tokens.get(token)
            if form.get("grant_type") != "access_token" or principal is None:
                return self._refuse(401, "UNAUTHORIZED", "not an Entra access token")
            if self.directory.audiences.get(token) not in ACR_AUDIENCES:
                return self._refuse(401, "UNAUTHORIZED", f"audience {self.directory.audiences.get(token)!r}")
            refresh = secrets.token_hex(16)
            self.refresh_tokens[refresh] = principal
            return 200, {"refresh_token": refresh}
        if path == "/oauth2/token":
            principal = self.refresh_tokens.get(form.get("refresh_token", ""))
            if form.get("grant_type") != "refresh_token" or principal is None:
                return self._refuse(401, "UNAUTHORIZED", "not a refresh token of this registry")
            granted: set[str] = set()
            scope = form.get("scope", "")
            if scope:
                kind, _, rest = scope.partition(":")
                repository, _, actions = rest.rpartition(":")
                if kind == "repository" and "pull" in actions.split(","):
                    if self.directory.action_allowed(principal, PULL_ACTION, self.registry_id):
                        granted.add(repository)
                    else:
                        self.refused.append(f"DENIED: {principal} may not pull {repository} (no AcrPull)")
            access = secrets.token_hex(16)
            self.access_tokens[access] = granted
            return 200, {"access_token": access}
        return self._refuse(404, "NOT_FOUND", path)

    def manifest(
        self, path: str, access: str
    ) -> tuple[int, dict[str, Any]] | tuple[int, dict[str, Any], dict[str, str]]:
        parts = path.strip("/").split("/")
        if parts[:1] != ["v2"] or len(parts) < 4 or parts[-2] != "manifests":
            return self._refuse(404, "NOT_FOUND", path)
        repository, reference = "/".join(parts[1:-2]), parts[-1]
        if repository not in self.access_tokens.get(access, set()):
            return self._refuse(401, "UNAUTHORIZED", f"authentication required to pull {repository}")
        digest = reference if reference.startswith("sha256:") else self.tags.get((repository, reference), "")
        manifest = self.manifests.get(repository, {}).get(digest)
        if manifest is None:
            return self._refuse(404, "MANIFEST_UNKNOWN", f"manifest {reference} of {repository} was never pushed")
        self.pulled.append(f"{repository}@{digest}")
        return 200, json.loads(manifest), {"Docker-Content-Digest": digest}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
