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
* jobs: ``PUT`` a sweep job (its body is checked against the REST models azure-ai-ml ships, strictly:
  :func:`tests.arm_schema.check`; a refused body is 400 naming the paths), ``GET``, ``POST .../cancel``;
  a sweep's status moves on with each ``GET`` along a script (:meth:`AzureMLStandIn.script`);
* children of a sweep through the run-history API (``rundata``/``children``), with their properties;
* model versions (``PUT``/``GET``), their files uploaded to Azurite the same way.

Every request is recorded (method, path, query, body) before routing.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import ipaddress
import json
import re
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from azure.core.credentials import AccessToken

WS = r"/subscriptions/(?P<sub>[^/]+)/resource[gG]roups/(?P<rg>[^/]+)/providers/Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/]+)"  # noqa: E501


def mint_certificate(folder: Path, *names: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, localhost and ``names``, and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "azureml-stand-in")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    *(x509.DNSName(n) for n in names),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "stand-in.pem", folder / "stand-in.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


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


@dataclass
class Child:
    """A trial of a sweep as the stand-in reports it: status over time, properties, its model's files."""

    name: str
    statuses: list[str]
    properties: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    metric: str = "accuracy"
    history: dict[int, float] = field(default_factory=dict)  # the running mean per fold
    params: dict[str, str] = field(default_factory=dict)
    draw: dict[str, Any] = field(default_factory=dict)  # what HyperDrive drew: recorded on the parent
    created: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())

    def mlflow_run(self) -> dict[str, Any]:
        """The trial's MLflow run, as MLflow's REST API returns it (run id = job name)."""
        start = int(dt.datetime.fromisoformat(self.created).timestamp() * 1000)
        finished = self.statuses[0] in {"Completed", "Failed", "Canceled"}
        metrics = [{"key": self.metric, "value": v, "step": s, "timestamp": start + s} for s, v in self.history.items()]
        return {
            "info": {
                "run_id": self.name,
                "run_uuid": self.name,
                "experiment_id": "1",
                "status": {"Completed": "FINISHED", "Failed": "FAILED", "Canceled": "KILLED"}.get(
                    self.statuses[0], "RUNNING"
                ),
                "start_time": start,
                **({"end_time": start + 60_000} if finished else {}),
                "lifecycle_stage": "active",
            },
            "data": {
                "metrics": metrics[-1:] if metrics else [],
                "params": [{"key": k, "value": v} for k, v in self.params.items()],
                "tags": [],
            },
        }


@dataclass
class Sweep:
    statuses: list[str]
    children: list[tuple[int, Child]]  # (appears at the parent's n-th GET, child)
    properties: dict[str, str] = field(default_factory=dict)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, str], Any]:
    return status, {}, {"error": {"code": code, "message": message}}


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
    ) -> None:
        self.blob_url = azurite_blob_url.rstrip("/")
        self.account, self.key = azurite_account, azurite_key
        self.token = entra_token()  # what ARM-scoped requests must carry
        self.sub, self.rg, self.ws = subscription, resource_group, workspace
        self.container = container
        self.job_validator = job_validator
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
                    self.put_blob(_output_path(child.name, "model") + file, data)
            elif child.name in self.children and len(child.statuses) > 1:
                child.statuses.pop(0)
        if self._gets[name] > 1 and len(sweep.statuses) > 1:
            sweep.statuses.pop(0)

    def child_job(self, name: str) -> dict[str, Any]:
        child = self.children[name]
        return {
            "id": f"{self.prefix}/jobs/{name}",
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/jobs",
            "systemData": {"createdAt": child.created, "lastModifiedAt": _now()},
            "properties": {"jobType": "Command", "status": child.statuses[0], "properties": child.properties},
        }

    def seed_data(self, name: str, version: str, data_type: str, uri: str) -> None:
        """A data asset registered earlier (by someone else)."""
        body = {"properties": {"dataType": data_type, "dataUri": uri, "provisioningState": "Succeeded"}}
        with self._lock:
            self.assets[f"data/{name}/{version}"] = _resource(self, f"data/{name}/versions", version, body)

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
    def handle(self, method: str, path: str, query: dict[str, str], body: Any, auth: str | None) -> Any:
        with self._lock:
            record = Recorded(method, path, query, body)
            self.requests.append(record)
            if auth != f"Bearer {self.token}" and path != "/discovery":  # discovery is anonymous, as in Azure
                return _error(401, "AuthenticationFailed", "missing or wrong bearer token")
            for verb, pattern, handler in ROUTES:
                match = re.fullmatch(pattern, path)
                if verb == method and match:
                    return handler(self, match, query, body)
            self.unrouted.append(record)
            return _error(404, "NoRoute", f"the stand-in has no route {method} {path}")


ROUTES: list[tuple[str, str, Callable[..., Any]]] = []


def route(method: str, pattern: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        ROUTES.append((method, pattern, fn))
        return fn

    return register


class _Handler(BaseHTTPRequestHandler):
    ws: AzureMLStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        status, headers, answer = self.ws.handle(
            self.command, parts.path, dict(parse_qsl(parts.query)), body, self.headers.get("Authorization")
        )
        data = b"" if answer is None else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

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
            self.send_error(403, f"the stand-in's proxy only reaches {self.ws.storage_host}")
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


# ------------------------------------------------------------------------------------ routes
def _resource(ws: AzureMLStandIn, kind: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(body)
    out.update(id=f"{ws.prefix}/{kind}/{name}", name=name, type=f"Microsoft.MachineLearningServices/workspaces/{kind}")
    out.setdefault("systemData", {"createdAt": _now(), "createdBy": "stand-in", "lastModifiedAt": _now()})
    return out


@route("GET", WS)
def _workspace(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    host = ws.url.removeprefix("https://")
    return (
        200,
        {},
        {
            "id": ws.prefix,
            "name": ws.ws,
            "type": "Microsoft.MachineLearningServices/workspaces",
            "location": "westeurope",
            "identity": {"type": "SystemAssigned", "principalId": str(uuid.uuid4()), "tenantId": str(uuid.uuid4())},
            "properties": {
                "friendlyName": ws.ws,
                "workspaceId": "00000000-0000-0000-0000-000000000001",
                "discoveryUrl": f"{ws.url}/discovery",
                "mlFlowTrackingUri": f"azureml://{host}/mlflow/v1.0{ws.prefix}",
                "storageAccount": f"/subscriptions/{ws.sub}/resourceGroups/{ws.rg}/providers/"
                f"Microsoft.Storage/storageAccounts/{ws.account}",
                "provisioningState": "Succeeded",
            },
        },
    )


@route("GET", r"/discovery")
def _discovery(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    keys = ("api", "catalog", "experimentation", "gallery", "history", "hyperdrive", "labeling", "modelmanagement")
    return 200, {}, {**{k: ws.url for k in keys}, "pipelines": ws.url, "studio": ws.url}


# -- compute
@route("GET", WS + r"/computes/(?P<name>[^/]+)")
def _get_compute(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    found = ws.computes.get(m["name"])
    if found is None:
        return _error(404, "ResourceNotFound", f"compute {m['name']} not found")
    return 200, {}, found


@route("PUT", WS + r"/computes/(?P<name>[^/]+)")
def _put_compute(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    props = (body or {}).get("properties") or {}
    if props.get("computeType") != "AmlCompute" or not (props.get("properties") or {}).get("vmSize"):
        return _error(400, "BadRequest", "an AmlCompute with properties.properties.vmSize is required")
    status = 200 if m["name"] in ws.computes else 201
    stored = _resource(ws, "computes", m["name"], body)
    stored["properties"]["provisioningState"] = "Creating"
    stored["properties"]["properties"].update(allocationState="Steady", currentNodeCount=0, targetNodeCount=0)
    ws.computes[m["name"]] = stored
    done = stored["properties"]
    headers = ws.operation(lambda: done.update(provisioningState="Succeeded"), q.get("api-version", ""))
    return status, headers, stored


@route("GET", r"/operations/(?P<op>[0-9a-f]+)")
def _operation(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    operation = ws._operations.get(m["op"])
    if operation is None:
        return _error(404, "NotFound", "no such operation")
    operation[0] += 1
    if operation[0] < 2:  # InProgress on the first poll, as ARM's operations usually are
        return 200, {"Retry-After": "1"}, {"status": "InProgress"}
    operation[1]()
    return 200, {}, {"status": "Succeeded"}


# -- versioned assets: code, environments, models
ASSET = WS + r"/(?P<kind>codes|environments|models|data)/(?P<name>[^/]+)/versions"


@route("GET", ASSET)
def _list_versions(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    prefix = f"{m['kind']}/{m['name']}/"
    found = [a for key, a in ws.assets.items() if key.startswith(prefix)]
    if "hash" in q:
        found = [a for a in found if (a["properties"].get("properties") or {}).get("hash_sha256") == q["hash"]]
    return 200, {}, {"value": found}


@route("GET", WS + r"/(?P<kind>codes|environments|models|data)/(?P<name>[^/]+)")
def _get_container(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    versions = [key for key in ws.assets if key.startswith(f"{m['kind']}/{m['name']}/")]
    if not versions:
        return _error(404, "ResourceNotFound", f"{m['kind']} {m['name']} not found")
    latest = max(versions, key=lambda key: int(key.rsplit("/", 1)[1]) if key.rsplit("/", 1)[1].isdigit() else 0)
    return 200, {}, _resource(ws, m["kind"], m["name"], {"properties": {"latestVersion": latest.rsplit("/", 1)[1]}})


@route("GET", ASSET + r"/(?P<version>[^/]+)")
def _get_version(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    found = ws.assets.get(f"{m['kind']}/{m['name']}/{m['version']}")
    if found is None:
        return _error(404, "ResourceNotFound", f"{m['kind']} {m['name']}:{m['version']} not found")
    return 200, {}, found


@route("PUT", ASSET + r"/(?P<version>[^/]+)")
def _put_version(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    key = f"{m['kind']}/{m['name']}/{m['version']}"
    status = 200 if key in ws.assets else 201
    if m["kind"] == "models" and ((body or {}).get("properties") or {}).get("modelType") == "mlflow_model":
        flavors = ws.mlflow_flavors(body["properties"].get("modelUri", ""))
        if flavors is None:
            return _error(400, "UserError", "no MLmodel file at the model's path: not an MLflow model")
        body = copy.deepcopy(body)
        body["properties"]["flavors"] = flavors
    stored = _resource(ws, f"{m['kind']}/{m['name']}/versions", m["version"], body or {})
    stored["properties"]["provisioningState"] = "Succeeded"
    ws.assets[key] = stored
    return status, {}, stored


@route("POST", ASSET + r"/(?P<version>[^/]+)/startPendingUpload")
def _pending_upload(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    """A SAS URL of a fresh folder in the datastore's container (in Azurite), as AzureML hands out."""
    folder = f"LocalUpload/{uuid.uuid4().hex}"
    blob_uri, sas_uri = ws._sas_for(folder)
    return (
        200,
        {},
        {
            "blobReferenceForConsumption": {
                "blobUri": blob_uri,
                "storageAccountArmId": f"/subscriptions/{ws.sub}/resourceGroups/{ws.rg}/providers/"
                f"Microsoft.Storage/storageAccounts/{ws.account}",
                "credential": {"credentialType": "SAS", "sasUri": sas_uri},
            },
            "pendingUploadId": (body or {}).get("pendingUploadId") or uuid.uuid4().hex,
            "pendingUploadType": "TemporaryBlobReference",
        },
    )


# -- datastores
def _datastore(ws: AzureMLStandIn) -> dict[str, Any]:
    return _resource(
        ws,
        "datastores",
        "workspaceblobstore",
        {
            "properties": {
                "datastoreType": "AzureBlob",
                "accountName": ws.account,
                "containerName": ws.container,
                "endpoint": "core.windows.net",
                "protocol": "https",
                "isDefault": True,
                "credentials": {"credentialsType": "AccountKey"},
                "serviceDataAccessAuthIdentity": "WorkspaceSystemAssignedIdentity",
            }
        },
    )


@route("GET", WS + r"/datastores")
def _list_datastores(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    return 200, {}, {"value": [_datastore(ws)]}


@route("POST", WS + r"/datastores/(?P<name>[^/]+)/listSecrets")
def _datastore_secrets(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    """A container SAS (what AzureML returns for an expirable secret)."""
    sas = ws._sas_for("")[1].split("?", 1)[1]
    return 200, {}, {"secretsType": "Sas", "sasToken": sas}


@route("GET", WS + r"/datastores/(?P<name>[^/]+)")
def _get_datastore(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    if m["name"] != "workspaceblobstore":
        return _error(404, "ResourceNotFound", f"datastore {m['name']} not found")
    return 200, {}, _datastore(ws)


# -- jobs
def validate_job(body: Any) -> list[str]:
    """Problems of a job PUT body against the REST models azure-ai-ml ships (``JobBase``)."""
    from azure.ai.ml._restclient.arm_ml_service.models import JobBase

    from tests import arm_schema

    # AzureML parses enum values case-insensitively, and azure-ai-ml itself sends e.g. goal "maximize".
    return [str(p) for p in arm_schema.check(body, JobBase, enum_casing=False)]


def _job_view(ws: AzureMLStandIn, name: str) -> dict[str, Any]:
    """The job as a GET returns it: the stored body with the status of the script's current step."""
    job = copy.deepcopy(ws.jobs[name])
    sweep = ws.sweeps.get(name)
    if sweep is not None:
        job["properties"]["status"] = sweep.statuses[0]
        job["properties"]["properties"] = {**(job["properties"].get("properties") or {}), **sweep.properties}
    return job


@route("PUT", WS + r"/jobs/(?P<name>[^/]+)")
def _put_job(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    problems = validate_job(body)
    if problems:
        return _error(400, "UserError", "the job body does not match the REST models: " + "; ".join(problems))
    if m["name"] in ws.jobs:
        return _error(409, "Conflict", f"job {m['name']} exists and cannot be changed")
    stored = _resource(ws, "jobs", m["name"], body)
    props = stored["properties"]
    props["services"] = {"Studio": {"jobServiceType": "Studio", "endpoint": f"{ws.url}/studio/{m['name']}"}}
    ws.jobs[m["name"]] = stored
    ws.sweeps.setdefault(m["name"], Sweep(["NotStarted"], []))
    return 201, {}, _job_view(ws, m["name"])


@route("GET", WS + r"/jobs/(?P<name>[^/]+)")
def _get_job(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    name = m["name"]
    if name in ws.children:
        return 200, {}, ws.child_job(name)
    if name not in ws.jobs:
        return _error(404, "UserError", f"job {name} not found")
    ws.advance(name)
    return 200, {}, _job_view(ws, name)


@route("POST", WS + r"/jobs/(?P<name>[^/]+)/cancel")
def _cancel_job(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    sweep = ws.sweeps.get(m["name"])
    if m["name"] not in ws.jobs or sweep is None:
        return _error(404, "UserError", f"job {m['name']} not found")
    if sweep.statuses[0] not in {"Completed", "Failed", "Canceled"}:
        sweep.statuses = ["CancelRequested", "Canceled"]
        for _, child in sweep.children:
            if child.statuses[0] not in {"Completed", "Failed", "Canceled"}:
                child.statuses = ["Canceled"]
    location = f"{ws.url}/operations/{uuid.uuid4().hex}"
    return 202, {"Location": location, "Retry-After": "1"}, None


# -- run history (the children of a sweep, run metadata for downloads)
HISTORY = r"/history/v1\.0" + WS


def _run(ws: AzureMLStandIn, child: Child, parent: str) -> dict[str, Any]:
    return {
        "runId": child.name,
        "parentRunId": parent,
        "rootRunId": parent,
        "displayName": child.name,
        "status": child.statuses[0],
        "createdUtc": child.created,
        "lastModifiedUtc": _now(),
        "properties": child.properties,
        "tags": {},
        "experimentId": str(uuid.uuid5(uuid.NAMESPACE_URL, parent)),
        "runType": "azureml.scriptrun",
    }


@route("GET", HISTORY + r"/runs/(?P<name>[^/]+)/children")
def _children(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    sweep = ws.sweeps.get(m["name"])
    if sweep is None:
        return _error(404, "UserError", f"run {m['name']} not found")
    runs = [_run(ws, c, m["name"]) for _, c in sweep.children if c.name in ws.children]
    return 200, {}, {"value": runs, "continuationToken": None, "nextLink": None}


def _output_path(run: str, output: str) -> str:
    return f"azureml/{run}/{output}/"


@route("POST", HISTORY + r"/rundata")
def _run_data(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    name = (body or {}).get("runId", "")
    child = ws.children.get(name)
    if child is None:
        return _error(404, "UserError", f"run {name} not found")
    parent = next(p for p, s in ws.sweeps.items() if any(c.name == name for _, c in s.children))
    run = _run(ws, child, parent)
    run["outputs"] = {
        output: {
            "assetId": f"azureml://locations/westeurope/workspaces/{ws.ws}/data/{name}-{output}/versions/1",
            "type": "uri_folder",
        }
        for output in ("model",)
    }
    return 200, {}, {"runMetadata": run}


@route("POST", r"/data/v1\.0" + WS + r"/dataversion/batchGetResolvedUris")
def _resolve_uris(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    values = {}
    for asset_id in (body or {}).get("values") or []:
        found = re.search(r"/data/(?P<run>.+)-(?P<output>[^-/]+)/versions/", asset_id)
        if found:
            path = _output_path(found["run"], found["output"])
            uri = f"azureml://subscriptions/{ws.sub}/resourcegroups/{ws.rg}/workspaces/{ws.ws}/datastores/workspaceblobstore/paths/{path}"
            values[asset_id] = {"uri": uri, "type": "UriFolder"}
    return 200, {}, {"values": values}


# -- MLflow tracking (the trials' metrics): the REST API of an MLflow server, under the workspace's URI
MLFLOW = r"/mlflow/v[12]\.0" + WS + r"/api/2\.0/mlflow"


@route("GET", MLFLOW + r"/runs/get")
def _mlflow_run(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    child = ws.children.get(q.get("run_id", ""))
    if child is None:
        return 404, {}, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"run {q.get('run_id')} not found"}
    return 200, {}, {"run": child.mlflow_run()}


@route("GET", MLFLOW + r"/metrics/get-history")
def _mlflow_history(ws: AzureMLStandIn, m: re.Match[str], q: dict[str, str], body: Any) -> Any:
    child = ws.children.get(q.get("run_id", ""))
    if child is None:
        return 404, {}, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"run {q.get('run_id')} not found"}
    key = q.get("metric_key", "")
    points = [
        {"key": key, "value": value, "step": step, "timestamp": 1_700_000_000_000 + step}
        for step, value in sorted(child.history.items())
        if child.metric == key
    ]
    return 200, {}, {"metrics": points}
