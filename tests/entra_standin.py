"""Managed identities as Azure enforces them, for the VM stand-in: who a token names, and what its roles let
it do to Storage's data.

Three parts share one :class:`Directory` (the identities the local ARM server created, and the role
assignments it recorded):

* **Instance metadata (IMDS)**: :class:`ImdsServer` answers ``GET /vm/<vm>/metadata/identity/oauth2/token``
  (the VM stand-in points each VM's ``AZURE_POD_IDENTITY_AUTHORITY_HOST`` at its own prefix, so a VM gets
  tokens only for the identities attached to *it* in ARM); ``Metadata: true`` is required (400 otherwise,
  as IMDS does), and a ``client_id`` not attached to that VM is refused (400 ``identity not found``).
* **Storage's data plane**: :class:`StorageProxy` serves HTTPS (a self-signed certificate the VMs trust
  through ``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE``: Azure refuses bearer tokens over plain http and so do
  the SDKs) in front of Azurite, which checks no token. Each request needs ``Authorization: Bearer`` (401
  otherwise) and an ``x-ms-version`` of 2017-11-09 or later (OAuth's minimum; 400 otherwise), and its data
  action (``.../containers/blobs/read``, ``write``, ``delete``) must be granted to the token's principal at
  the container's scope or above by an assignment older than :attr:`Directory.propagation_s` (Azure: up to
  minutes), else 403 ``AuthorizationPermissionMismatch``, Azure's code and words. What passes goes on to
  Azurite with a SAS of that container only. Container-level writes (create, delete, set ACL) are refused.
* **Role definitions**: the bundled built-in roles (tests/data/builtin_roles.json) and their ``dataActions``.

Stricter than Azure in one way only: a VM without an outbound path (its own network namespace) reaches no
IMDS either, where Azure's link-local IMDS would still answer; such a VM reaches no Storage anyway.
"""

from __future__ import annotations

import datetime as dt
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from tests.json_http import send_json
from tests.rbac import _covers, _matches, builtin_roles

BLOBS = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs"
OAUTH_MIN_VERSION = "2017-11-09"


@dataclass(frozen=True)
class Identity:
    resource_id: str
    client_id: str
    principal_id: str


@dataclass(frozen=True)
class RoleAssignment:
    id: str
    scope: str
    role_id: str
    """The role definition's GUID."""
    principal_id: str
    created: float


@dataclass
class Directory:
    """Entra's view of the identities and the role assignments ARM made (shared by ARM, IMDS and Storage)."""

    propagation_s: float = 0.0
    """How long a new role assignment takes to apply to data requests (Azure: up to minutes)."""
    identities: dict[str, Identity] = field(default_factory=dict)
    """By lower-cased resource id."""
    assignments: dict[str, RoleAssignment] = field(default_factory=dict)
    """By lower-cased assignment id."""
    tokens: dict[str, str] = field(default_factory=dict)
    """Access token -> principal id."""
    audiences: dict[str, str] = field(default_factory=dict)
    """Access token -> the resource it was issued for (its audience)."""
    denied: list[str] = field(default_factory=list)
    """Every data request refused, as ``principal action scope`` (for tests)."""

    def __post_init__(self) -> None:
        self.lock = threading.RLock()

    def new_identity(self, resource_id: str) -> Identity:
        with self.lock:
            found = self.identities.get(resource_id.lower())
            if found is None:
                found = Identity(resource_id, str(uuid.uuid4()), str(uuid.uuid4()))
                self.identities[resource_id.lower()] = found
            return found

    def forget_identity(self, resource_id: str) -> None:
        with self.lock:
            self.identities.pop(resource_id.lower(), None)

    def principal(self, principal_id: str) -> Identity | None:
        with self.lock:
            return next((i for i in self.identities.values() if i.principal_id == principal_id), None)

    def assign(self, assignment_id: str, scope: str, role_id: str, principal_id: str) -> RoleAssignment:
        with self.lock:
            found = self.assignments.get(assignment_id.lower())
            if found is None:
                found = RoleAssignment(assignment_id, scope, role_id.lower(), principal_id, time.monotonic())
                self.assignments[assignment_id.lower()] = found
            return found

    def unassign(self, assignment_id: str) -> RoleAssignment | None:
        with self.lock:
            return self.assignments.pop(assignment_id.lower(), None)

    def token_for(self, identity: Identity, resource: str = "") -> str:
        with self.lock:
            token = uuid.uuid4().hex
            self.tokens[token] = identity.principal_id
            self.audiences[token] = resource
            return token

    def action_allowed(self, principal_id: str, action: str, scope: str) -> bool:
        """Whether an assignment in effect grants control-plane ``action`` at ``scope`` (ACR's pull: AcrPull's
        ``registries/pull/read``), as :meth:`data_allowed` does for data actions."""
        roles = builtin_roles()
        now = time.monotonic()
        with self.lock:
            return any(
                a.principal_id == principal_id
                and now - a.created >= self.propagation_s
                and (role := roles.get(a.role_id)) is not None
                and _covers(a.scope, scope)
                and role.allows(action)
                for a in self.assignments.values()
            )

    def data_allowed(self, principal_id: str, action: str, scope: str) -> bool:
        """Whether an assignment in effect (older than the propagation delay) grants data ``action`` at ``scope``."""
        roles = builtin_roles()
        now = time.monotonic()
        with self.lock:
            for a in self.assignments.values():
                role = roles.get(a.role_id)
                if (
                    a.principal_id == principal_id
                    and now - a.created >= self.propagation_s
                    and role is not None
                    and _covers(a.scope, scope)
                    and any(_matches(p, action) for p in role.data_actions)
                    and not any(_matches(p, action) for p in role.not_data_actions)
                ):
                    return True
            self.denied.append(f"{principal_id} {action} {scope}")
            return False


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that drops a kept-alive connection is not an error."""


def _serve(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return thread


class ImdsServer:
    """Each VM's instance metadata token endpoint, under ``/vm/<name>``; ``attached(name)`` gives the
    resource ids of the user-assigned identities ARM has on that VM."""

    def __init__(self, directory: Directory, attached: Callable[[str], list[str]]) -> None:
        imds = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def do_GET(self) -> None:
                status, payload = imds.token(self.path, self.headers.get("Metadata", ""))
                send_json(self, status, {}, payload)

        self.directory, self.attached = directory, attached
        self.server = _Quiet(("127.0.0.1", 0), Handler)
        _serve(self.server)

    def authority(self, vm_name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/vm/{vm_name}"

    def token(self, path: str, metadata: str) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(path)
        segments = parts.path.strip("/").split("/")
        query = dict(parse_qsl(parts.query))
        if metadata.lower() != "true":
            return 400, {"error": "invalid_request", "error_description": "Required metadata header not specified"}
        if segments[:1] != ["vm"] or segments[2:] != ["metadata", "identity", "oauth2", "token"]:
            return 404, {"error": "not_found"}
        if not query.get("resource") or not query.get("api-version"):
            return 400, {"error": "invalid_request", "error_description": "resource and api-version are required"}
        with self.directory.lock:
            identities = [self.directory.identities.get(i.lower()) for i in self.attached(segments[1])]
        mine = [i for i in identities if i is not None]
        wanted = query.get("client_id")
        chosen = [i for i in mine if wanted in (None, i.client_id)]
        if not chosen or (wanted is None and len(mine) > 1):
            return 400, {"error": "invalid_request", "error_description": "Identity not found"}
        expires = int(time.time()) + 3600
        return 200, {
            "access_token": self.directory.token_for(chosen[0], query["resource"]),
            "client_id": chosen[0].client_id,
            "expires_in": "3600",
            "expires_on": str(expires),
            "ext_expires_in": "3600",
            "not_before": str(expires - 3600),
            "resource": query["resource"],
            "token_type": "Bearer",
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files in ``folder``)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "storage-cert.pem", folder / "storage-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_file.chmod(0o644)
    return cert_file, key_file


class StorageProxy:
    """Azure Storage's blob endpoint with Entra ID authorization, in front of Azurite (see the module docstring).

    ``account_id`` is the storage account's ARM id (the scope role assignments name); ``azurite`` Azurite's
    blob endpoint for the account (``http://127.0.0.1:PORT/devstoreaccount1``) and ``account_key`` its key.
    """

    def __init__(self, directory: Directory, *, account_id: str, azurite: str, account_key: str) -> None:
        proxy = self
        self.directory, self.account_id, self.azurite, self.account_key = directory, account_id, azurite, account_key
        self.account = azurite.rstrip("/").rsplit("/", 1)[-1]
        self.folder = Path(tempfile.mkdtemp(prefix="storage-proxy-"))
        self.folder.chmod(0o755)
        self.cert, key = self_signed(self.folder)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, data = proxy.forward(self.command, self.path, dict(self.headers.items()), body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = handle_one  # noqa: N815

        self.server = _Quiet(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        _serve(self.server)

    @property
    def url(self) -> str:
        """The account's blob endpoint as the VMs see it: ``https://127.0.0.1:PORT/<account>``."""
        return f"https://127.0.0.1:{self.server.server_address[1]}/{self.account}"

    @staticmethod
    def _action(method: str, blob: str, query: dict[str, str]) -> str | None:
        """The data action a request needs, or None for what the VMs may never do (container writes)."""
        if not blob:  # the container itself: only listing its blobs is a data action
            return f"{BLOBS}/read" if method == "GET" and query.get("comp") == "list" else None
        verb = {"GET": "read", "HEAD": "read", "PUT": "write", "DELETE": "delete"}.get(method)
        return f"{BLOBS}/{verb}" if verb else None

    def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        account, _, rest = parts.path.lstrip("/").partition("/")
        container, _, blob = rest.partition("/")
        lower = {k.lower(): v for k, v in headers.items()}
        auth = lower.get("authorization", "")
        if not auth.startswith("Bearer "):
            return _storage_error(401, "NoAuthenticationInformation", "Server failed to authenticate the request.")
        principal = self.directory.tokens.get(auth.removeprefix("Bearer ").strip())
        if principal is None:
            return _storage_error(401, "InvalidAuthenticationInfo", "Server failed to authenticate the request.")
        if lower.get("x-ms-version", "") < OAUTH_MIN_VERSION:
            return _storage_error(400, "InvalidHeaderValue", "OAuth needs x-ms-version 2017-11-09 or later.")
        action = self._action(method, blob, query)
        scope = f"{self.account_id}/blobServices/default/containers/{container}"
        if account != self.account or not container or action is None:
            return _storage_error(403, "AuthorizationPermissionMismatch", _MISMATCH)
        if not self.directory.data_allowed(principal, action, scope):
            return _storage_error(403, "AuthorizationPermissionMismatch", _MISMATCH)
        return self._to_azurite(method, account, container, blob, query, lower, body)

    def _to_azurite(
        self,
        method: str,
        account: str,
        container: str,
        blob: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
    ) -> tuple[int, dict[str, str], bytes]:
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        sas = generate_container_sas(
            account,
            container,
            account_key=self.account_key,
            permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True, add=True, create=True),
            expiry=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10),
        )
        target = f"{self.azurite.rstrip('/')}/{container}" + (f"/{blob}" if blob else "")  # still URL-encoded
        url = f"{target}?{urlencode(query)}&{sas}" if query else f"{target}?{sas}"
        keep = {k: v for k, v in headers.items() if k not in {"authorization", "host", "content-length", "connection"}}
        request = urllib.request.Request(url, data=body if method in {"PUT", "POST"} else None, method=method)
        for name, value in keep.items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, _passed(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, _passed(error.headers), error.read()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


_MISMATCH = "This request is not authorized to perform this operation using this permission."


def _passed(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in {"content-length", "transfer-encoding", "connection"}}


def _storage_error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    body = f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return status, {"Content-Type": "application/xml", "x-ms-error-code": code}, body.encode()
