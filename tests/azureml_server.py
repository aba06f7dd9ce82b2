"""A local stand-in for an AzureML workspace, which the real ``azure-ai-ml`` client talks to over TLS.

azure-ai-ml takes its management endpoint from ``AZUREML_DEV_URL_MFE``; some operations refuse a bearer
token over plain http, so the stand-in serves https with a self-signed certificate minted here
(:func:`mint_certificate`) that the test trusts (``REQUESTS_CA_BUNDLE``/``SSL_CERT_FILE``, see
:meth:`AzureMLStandIn.environ`). It answers what the control plane's ``AzureMLClient`` calls, the way
AzureML does:

* the workspace (its discovery document points the run-history client back here) and its default blob
  datastore, whose container lives in Azurite: code and environment uploads get a SAS URL of a real
  Azurite container (``startPendingUpload``), so the files really land there;
* AmlCompute: ``PUT`` is a long-running operation (``Azure-AsyncOperation``), ``provisioningState``
  ``Creating`` then ``Succeeded``; ``GET`` of a missing cluster is 404;
* environment and code versions (``PUT``/``GET``, code looked up by content hash);
* jobs: ``PUT`` a sweep or command job (its body is checked against the REST models azure-ai-ml ships, strictly:
  :func:`tests.arm_schema.check`; a refused body is 400 naming the paths), ``GET``, ``POST .../cancel``;
  a sweep's status moves on with each ``GET`` along a script (:meth:`AzureMLStandIn.script`); a command
  job runs when the test says its node does (:meth:`AzureMLStandIn.run_command_job`), for real;
* children of a sweep through the run-history API (``children``, ``rundata``), their outputs resolved by
  the dataset data plane to datastore paths whose files are in Azurite (``jobs.download``);
* each trial's MLflow run and metric history (the workspace's MLflow tracking URI points here);
* data assets (``GET``) and model versions: an ``mlflow_model`` registered from a job output gets the
  flavors of the ``MLmodel`` found there, and without one it is refused, as AzureML does.

The datastore's ``https://<account>.blob.core.windows.net`` (which azure-ai-ml builds itself) is reached
through a loopback proxy that only tunnels to that host and forwards to Azurite (:class:`_StorageProxy`).

Every request is recorded (method, path, query, body) before routing; the routes themselves are in
:mod:`tests.azureml_routes`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from azure.core.credentials import AccessToken

from tests.azureml_rbac import refusal
from tests.azureml_routes import ROUTES, Child, Sweep, error, now, output_path, resource, validate_job
from tests.json_http import read_json_body, send_json
from tests.rbac import Rbac
from tests.tls import mint_certificate

__all__ = ["AzureMLStandIn", "Child", "StaticToken", "Sweep", "entra_token", "mint_certificate", "validate_job"]


def entra_token(audience: str = "https://management.azure.com") -> str:
    """A JWT shaped like a Microsoft Entra access token of a managed identity, for ``audience`` (unsigned:
    the stand-in compares it whole; azure-ai-ml reads its claims when a job runs with the submitter's
    identity, and checks that the AzureML-scoped one is for ``https://ml.azure.com/``)."""
    import base64

    def part(document: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()

    claims = {
        "aud": audience,
        "oid": "00000000-0000-0000-0000-0000000000aa",
        "tid": "00000000-0000-0000-0000-0000000000bb",
        "appid": "00000000-0000-0000-0000-0000000000cc",
        "idtyp": "app",
    }
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


class StaticToken:
    """A ``TokenCredential``: one fixed token per audience (the scope less ``/.default``)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        audience = scopes[0].removesuffix("/.default") if scopes else "https://management.azure.com"
        return AccessToken(entra_token(audience), int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo(self.get_token(*scopes).token, int(time.time()) + 3600)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any


class AzureMLStandIn:
    """The stand-in workspace; ``with AzureMLStandIn(blob_url=..., blob_key=...) as ws: ...``."""

    def __init__(
        self,
        *,
        azurite_blob_url: str,
        azurite_account: str,
        azurite_key: str,
        subscription: str = "sub",
        resource_group: str = "rg",
        workspace: str = "ws",
        container: str = "azureml-blobstore",
        job_validator: Callable[[dict[str, Any]], list[str]] | None = None,
        rbac: Rbac | None = None,
    ) -> None:
        self.blob_url = azurite_blob_url.rstrip("/")
        self.account, self.key = azurite_account, azurite_key
        self.token = entra_token()  # what ARM-scoped requests must carry
        self.identity_header = uuid.uuid4().hex
        self.sub, self.rg, self.ws = subscription, resource_group, workspace
        self.container = container
        self.job_validator = job_validator
        self.rbac = rbac  # the caller's role assignments (tests/rbac.py); None: every call is allowed
        self.requests: list[Recorded] = []
        self.unrouted: list[Recorded] = []
        self.computes: dict[str, dict[str, Any]] = {}
        self.assets: dict[str, dict[str, Any]] = {}  # "<kind>/<name>/<version>" -> resource
        self.jobs: dict[str, dict[str, Any]] = {}
        self.sweeps: dict[str, Sweep] = {}
        self.children: dict[str, Child] = {}
        self._gets: dict[str, int] = {}
        self._operations: dict[str, list[Any]] = {}  # id -> [polls, what to do when it ends]
        self._lock = threading.RLock()
        self._tmp = tempfile.TemporaryDirectory(prefix="azureml-stand-in-")
        self.storage_host = f"{azurite_account}.blob.core.windows.net"
        self.cert_path, self.key_path = mint_certificate(Path(self._tmp.name), self.storage_host)
        self._server: ThreadingHTTPServer | None = None
        self._proxy: ThreadingHTTPServer | None = None

    # -- lifecycle

    @classmethod
    def on_azurite(cls, connection_string: str, **options: Any) -> AzureMLStandIn:
        """A workspace whose datastore is the session's Azurite (``connection_string``, its well-known account)."""
        from tests.azurite import ACCOUNT, KEY

        blob = re.search(r"BlobEndpoint=([^;]+)", connection_string)
        assert blob, "the connection string names no blob endpoint"
        return cls(azurite_blob_url=blob.group(1), azurite_account=ACCOUNT, azurite_key=KEY, **options)

    def __enter__(self) -> AzureMLStandIn:
        stand_in = self

        class Handler(_Handler):
            ws = stand_in

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

        class Proxy(_StorageProxy):
            ws = stand_in
            tls = context

        self._proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
        self._proxy.daemon_threads = True
        threading.Thread(target=self._proxy.serve_forever, args=(0.05,), daemon=True).start()
        self._ensure_container()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in (self._server, self._proxy):
            if server is not None:
                server.shutdown()
                server.server_close()
        self._tmp.cleanup()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def prefix(self) -> str:
        return (
            f"/subscriptions/{self.sub}/resourceGroups/{self.rg}/providers/"
            f"Microsoft.MachineLearningServices/workspaces/{self.ws}"
        )

    def environ(self) -> dict[str, str]:
        """Environment that points azure-ai-ml here and makes its clients trust the certificate."""
        assert self._proxy is not None
        proxy = f"http://127.0.0.1:{self._proxy.server_address[1]}"
        return {
            "AZUREML_DEV_URL_MFE": self.url,
            "REQUESTS_CA_BUNDLE": str(self.cert_path),
            "SSL_CERT_FILE": str(self.cert_path),
            "HTTPS_PROXY": proxy,
            "https_proxy": proxy,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }

    def credential(self) -> StaticToken:
        return StaticToken()

    def managed_identity_environ(self) -> dict[str, str]:
        """What Azure gives a Function App for its managed identity (App Service's token endpoint), pointing at
        the stand-in's own endpoint: ``DefaultAzureCredential`` in another process then gets this workspace's
        token, as the real control plane gets its identity's."""
        return {"IDENTITY_ENDPOINT": f"{self.url}/msi/token", "IDENTITY_HEADER": self.identity_header}

    def _managed_identity_token(self, query: dict[str, str], header: str | None) -> Any:
        if header != self.identity_header:
            return error(401, "Unauthorized", "missing or wrong X-IDENTITY-HEADER")
        resource = query.get("resource", "").removesuffix("/")
        expires = str(int(time.time()) + 3600)
        token = {"access_token": entra_token(resource), "expires_on": expires, "token_type": "Bearer"}
        return 200, {}, {**token, "resource": resource}

    # -- scripting
    def script(
        self,
        job_name: str,
        statuses: list[str],
        children: list[tuple[int, Child]] | None = None,
        properties: dict[str, str] | None = None,
    ) -> None:
        """The statuses a job reports on successive GETs (the last one stays), the children that appear at
        the given GET of the parent, and properties AzureML sets on it (``best_child_run_id``)."""
        with self._lock:
            self.sweeps[job_name] = Sweep(list(statuses), list(children or []), dict(properties or {}))

    def advance(self, name: str) -> None:
        """One GET of a scripted job: its status moves one step on; children due at this step appear."""
        sweep = self.sweeps[name]
        self._gets[name] = self._gets.get(name, 0) + 1
        for at, child in sweep.children:
            if at <= self._gets[name] and child.name not in self.children:
                self.children[child.name] = child
                if child.draw:
                    sweep.properties[child.name] = json.dumps({f"--{k}": v for k, v in child.draw.items()})
                for file, data in child.files.items():  # what the trial wrote to its model output
                    self.put_blob(output_path(child.name, "model") + file, data)
            elif child.name in self.children and len(child.statuses) > 1:
                child.statuses.pop(0)
        if self._gets[name] > 1 and len(sweep.statuses) > 1:
            sweep.statuses.pop(0)

    def script_command_job(self, name: str, statuses: list[str], outputs: dict[str, dict[str, bytes]]) -> None:
        """A command job's node scripted instead of run: the statuses it reports and the files its outputs
        hold (what the command wrote, uploaded by AzureML to ``azureml/<job>/<output>/``)."""
        self.script(name, statuses)
        for output, files in outputs.items():
            for file, data in files.items():
                self.put_blob(output_path(name, output) + file, data)

    def run_command_job(self, name: str) -> Any:
        """Run command job ``name`` as an AmlCompute node would (:mod:`tests.azureml_compute`): its code and
        inputs from the datastore, its outputs uploaded back, its status the command's outcome."""
        from tests.azureml_compute import run_command_job

        with self._lock:
            return run_command_job(self, name)

    def child_job(self, name: str) -> dict[str, Any]:
        child = self.children[name]
        return {
            "id": f"{self.prefix}/jobs/{name}",
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/jobs",
            "systemData": {"createdAt": child.created, "lastModifiedAt": now()},
            "properties": {"jobType": "Command", "status": child.statuses[0], "properties": child.properties},
        }

    def seed_data(self, name: str, version: str, data_type: str, uri: str) -> None:
        """A data asset registered earlier (by someone else)."""
        body = {"properties": {"dataType": data_type, "dataUri": uri, "provisioningState": "Succeeded"}}
        with self._lock:
            self.assets[f"data/{name}/{version}"] = resource(self, f"data/{name}/versions", version, body)

    def seed_model(self, name: str, version: str, tags: dict[str, str]) -> None:
        """A model version registered earlier (by someone else)."""
        body = {"properties": {"modelType": "custom_model", "modelUri": "azureml://x", "flavors": {}, "tags": tags}}
        with self._lock:
            self.assets[f"models/{name}/{version}"] = resource(self, f"models/{name}/versions", version, body)

    def calls(self, method: str, contains: str = "") -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == method and contains in r.path]

    # -- storage (Azurite)
    def _container_client(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        conn = (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
            f"BlobEndpoint={self.blob_url};"
        )
        return BlobServiceClient.from_connection_string(conn).get_container_client(self.container)

    def _ensure_container(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._container_client().create_container()

    def blob_names(self, prefix: str = "") -> list[str]:
        return sorted(b.name for b in self._container_client().list_blobs(name_starts_with=prefix or None))

    def _sas_for(self, path: str) -> tuple[str, str]:
        """(blob URI, SAS URI) of a folder ``path`` in the datastore's container."""
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        sas = generate_container_sas(
            self.account,
            self.container,
            account_key=self.key,
            permission=ContainerSasPermissions(read=True, write=True, list=True, create=True, add=True),
            expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
        )
        blob_uri = f"{self.blob_url}/{self.container}/{path}"
        return blob_uri, f"{self.blob_url}/{self.container}?{sas}"

    def mlflow_flavors(self, uri: str) -> dict[str, Any] | None:
        """The flavors of the MLflow model at ``azureml://jobs/<job>/outputs/<output>/paths/<path>`` (its
        ``MLmodel`` in the job's output folder), as AzureML reads them on registration; None without one."""
        import yaml

        found = re.fullmatch(r"azureml://jobs/([^/]+)/outputs/([^/]+)/paths/(.*?)/?", uri)
        if found is None:
            return None
        blob = f"azureml/{found[1]}/{found[2]}/{found[3]}/MLmodel".replace("//", "/")
        try:
            document = yaml.safe_load(self._container_client().download_blob(blob).readall())
        except Exception:
            return None
        flavors = (document or {}).get("flavors") if isinstance(document, dict) else None
        if not isinstance(flavors, dict) or not flavors:
            return None
        return {name: {"data": {k: str(v) for k, v in (data or {}).items()}} for name, data in flavors.items()}

    def put_blob(self, path: str, data: bytes) -> None:
        self._container_client().upload_blob(path, data, overwrite=True)

    def operation(self, on_done: Callable[[], None], api_version: str) -> dict[str, str]:
        """Headers of a new long-running operation that ends ``Succeeded`` on its second poll."""
        op = uuid.uuid4().hex
        self._operations[op] = [0, on_done]
        return {"Azure-AsyncOperation": f"{self.url}/operations/{op}?api-version={api_version}", "Retry-After": "1"}

    # -- request handling
    def handle(
        self, method: str, path: str, query: dict[str, str], body: Any, auth: str | None, identity: str | None = None
    ) -> Any:
        with self._lock:
            record = Recorded(method, path, query, body)
            self.requests.append(record)
            if method == "GET" and path == "/msi/token":
                return self._managed_identity_token(query, identity)
            if auth != f"Bearer {self.token}" and path != "/discovery":  # discovery is anonymous, as in Azure
                return error(401, "AuthenticationFailed", "missing or wrong bearer token")
            refused = refusal(self.rbac, method, path, body) if self.rbac is not None else None
            if refused is not None:
                return refused
            for verb, pattern, handler in ROUTES:
                match = re.fullmatch(pattern, path)
                if verb == method and match:
                    return handler(self, match, query, body)
            self.unrouted.append(record)
            return error(404, "NoRoute", f"the stand-in has no route {method} {path}")


class _Handler(BaseHTTPRequestHandler):
    ws: AzureMLStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        status, headers, answer = self.ws.handle(
            self.command,
            parts.path,
            dict(parse_qsl(parts.query)),
            read_json_body(self),
            self.headers.get("Authorization"),
            self.headers.get("X-IDENTITY-HEADER"),
        )
        send_json(self, status, headers, answer)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve  # noqa: N815 - http.server's names


class _StorageProxy(BaseHTTPRequestHandler):
    """The datastore's storage account, ``https://<account>.blob.core.windows.net``, in Azurite.

    azure-ai-ml builds that URL from the datastore (account name + the cloud's storage suffix), as in
    Azure. The clients reach it through this loopback proxy (``HTTPS_PROXY``): it accepts ``CONNECT`` to
    that one host only, speaks TLS with the stand-in's certificate, and forwards each request to Azurite
    (path-style ``/<account>/...``). Nothing leaves the machine; no name is resolved.
    """

    ws: AzureMLStandIn
    tls: ssl.SSLContext
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_CONNECT(self) -> None:
        if self.path != f"{self.ws.storage_host}:443":
            self.senderror(403, f"the stand-in's proxy only reaches {self.ws.storage_host}")
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        self.connection = self.tls.wrap_socket(self.connection, server_side=True)
        self.rfile = self.connection.makefile("rb")
        self.wfile = self.connection.makefile("wb")
        self.close_connection = False

    def _forward(self) -> None:
        import http.client

        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        target = urlsplit(self.ws.blob_url)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "proxy-connection"}}
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        try:
            connection.request(self.command, f"{target.path}{self.path}", body=body, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            self.send_response(answer.status, answer.reason)
            for key, value in answer.getheaders():
                if key.lower() not in {"transfer-encoding", "content-length", "connection"}:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            self.wfile.flush()
        finally:
            connection.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _forward  # noqa: N815 - http.server's names
