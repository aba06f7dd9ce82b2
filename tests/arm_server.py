"""A local fake of the Azure Resource Manager routes ``azure-mgmt-network``/``-compute`` use.

Resource types: VNets and NSGs, and, for AzureVMCluster VMs, network interfaces, public IPs,
virtual machines and managed disks.

Tests point the real SDK at it (``base_url="http://127.0.0.1:PORT"``) and read back what the SDK
really sent. It speaks ARM's protocol where the SDK depends on it:

* ``PUT``/``GET``/``DELETE`` a ``virtualNetworks``/``networkSecurityGroups`` resource, ``GET`` the
  collection of a resource group (paged with ``nextLink``); ``api-version`` and a bearer token are
  required (400/401 otherwise);
* ``PUT`` answers 201 (new) or 200 (update) with an ``Azure-AsyncOperation`` URL whose status is
  ``InProgress`` on the first poll and ``Succeeded`` (or a scripted ``Failed``) after; ``DELETE``
  answers 202 with a ``Location`` URL that answers 202 once, then 204; deleting a missing resource
  is 204, as in Azure;
* a little of ARM's validation: ``location`` is required; a subnet must reference an NSG that
  exists (400 ``InvalidResourceReference``); an NSG a subnet still uses cannot be deleted (409
  ``InUseNetworkSecurityGroupCannotBeDeleted``);
* compute, as Azure does it: a NIC needs ``properties.ipConfigurations`` and a VM its hardware,
  storage, OS and network profiles under ``properties`` (400 otherwise, as for a body in the
  wrong shape); a NIC gets a private IP (``FakeArm.private_ip`` or the next free 10.0.0.x) and must
  name an existing subnet, NSG and public IP; a VM must name an existing NIC, and creating it creates
  its OS disk ``<vm>_OsDisk_1_<hex>`` *without* the VM's tags; deleting a VM also deletes the NIC and
  OS disk it marks ``deleteOption: Delete``; a NIC, public IP or disk still attached to a VM (or a
  public IP to a NIC) cannot be deleted (400 ``NicInUse``, 400 ``PublicIPAddressCannotBeDeleted``,
  409 ``OperationNotAllowed``);
* a fault script: :meth:`FakeArm.fail` makes the next N requests matching a method and path answer a
  given status, ARM error code and headers (429 + ``Retry-After``, 500, 409, 403, 404, ...).

Every request is recorded (:class:`RecordedRequest`) before faults or routing apply.
"""

from __future__ import annotations

import copy
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from azure.core.credentials import AccessToken

from tests import arm_schema
from tests.json_http import read_json_body, send_json

_PROVIDER = "Microsoft.Network"
_COMPUTE = "Microsoft.Compute"
_TYPES = {
    "virtualnetworks": "virtualNetworks",
    "networksecuritygroups": "networkSecurityGroups",
    "networkinterfaces": "networkInterfaces",
    "publicipaddresses": "publicIPAddresses",
    "virtualmachines": "virtualMachines",
    "disks": "disks",
}
_PROVIDERS = {"virtualMachines": _COMPUTE, "disks": _COMPUTE}  # the rest are Microsoft.Network
_RESOURCE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"(?P<provider>Microsoft\.Network|Microsoft\.Compute)/"
    r"(?P<type>virtualNetworks|networkSecurityGroups|networkInterfaces|publicIPAddresses|virtualMachines|disks)"
    r"(?:/(?P<name>[^/]+))?$",
    re.IGNORECASE,
)
_OPERATION = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/providers/(?:Microsoft\.Network|Microsoft\.Compute)/locations/"
    r"(?P<loc>[^/]+)/(?P<kind>operations|operationResults)/(?P<op>[^/]+)$",
    re.IGNORECASE,
)


def _provider(kind: str) -> str:
    return _PROVIDERS.get(kind, _PROVIDER)


def _ref(body: Any, *path: str) -> str:
    """``body["properties"][path...]["id"]`` lower-cased, or ""."""
    node = body
    for key in path:
        node = (node or {}).get(key) if isinstance(node, dict) else None
    return ((node or {}).get("id") or "").lower() if isinstance(node, dict) else ""


class StaticTokenCredential:
    """A ``TokenCredential`` that hands out one fixed token (counts how often it was asked)."""

    def __init__(self, token: str = "fake-arm-token") -> None:
        self.token = token
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        """Return the fixed token, valid for an hour."""
        self.calls += 1
        return AccessToken(self.token, int(time.time()) + 3600)


@dataclass
class RecordedRequest:
    """One HTTP request as the server received it."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]


@dataclass
class _Fault:
    method: str
    path_contains: str
    status: int
    code: str
    message: str
    headers: dict[str, str]
    remaining: int


@dataclass
class _Operation:
    kind: str  # "async" (PUT, Azure-AsyncOperation) or "location" (DELETE, Location)
    polls: int = 0
    error: dict[str, str] | None = None


@dataclass
class FakeArm:
    """The fake ARM endpoint; use as a context manager or call :meth:`start`/:meth:`close`."""

    token: str = "fake-arm-token"
    page_size: int = 2
    private_ip: str | None = None
    """The private IP every new NIC gets (e.g. 127.0.0.1 to reach a local scheduler); None: 10.0.0.x."""
    requests: list[RecordedRequest] = field(default_factory=list)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    on_vm_created: Callable[[dict[str, Any]], None] | None = None
    """Called with the stored VM (its request body's customData included) after each VM PUT: a VM
    stand-in boots it (tests/vm_standin.py)."""
    on_vm_deleted: Callable[[dict[str, Any]], None] | None = None
    """Called with the stored VM after it is deleted (or evicted): the stand-in stops its processes."""

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._faults: list[_Fault] = []
        self._operation_faults: list[dict[str, str]] = []
        self._operations: dict[str, _Operation] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> FakeArm:
        """Listen on a free port of 127.0.0.1 in a daemon thread."""
        fake = self

        class Handler(_Handler):
            arm = fake

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-arm", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the server."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeArm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- scripting and inspection ------------------------------------------------------------------

    def fail(
        self,
        method: str,
        path_contains: str,
        status: int,
        code: str,
        message: str = "scripted failure",
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` ``method`` requests whose path contains ``path_contains`` with
        ``status`` and ARM error body ``{"error": {"code", "message"}}``."""
        with self._lock:
            self._faults.append(
                _Fault(method.upper(), path_contains, status, code, message, dict(headers or {}), times)
            )

    def fail_next_operation(self, code: str, message: str) -> None:
        """The next PUT's async operation ends ``Failed`` with this error."""
        with self._lock:
            self._operation_faults.append({"code": code, "message": message})

    def evict(self, vm_name: str) -> dict[str, Any]:
        """What Azure does to a Spot VM with eviction policy Delete: the VM (and what it deletes with
        it) is gone, no request involved."""
        with self._lock:
            [vm] = [r for r in self.of_type("virtualMachines") if r["name"] == vm_name]
            del self.resources[vm["id"].lower()]
            self._delete_with_vm(vm)
        if self.on_vm_deleted is not None:
            self.on_vm_deleted(copy.deepcopy(vm))
        return vm

    def seed(self, resource_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Store a resource as if someone had created it earlier (no request recorded); a VM gets
        its OS disk as in :meth:`handle`."""
        match = _RESOURCE.match(resource_id)
        assert match and match["name"], resource_id
        with self._lock:
            stored = self._materialize(match, body)
            self.resources[stored["id"].lower()] = stored
            return stored

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """Stored resources of one type (``"virtualMachines"``, ``"disks"``, ...), sorted by id."""
        with self._lock:
            return [
                copy.deepcopy(r)
                for key, r in sorted(self.resources.items())
                if r["type"].lower().endswith("/" + kind.lower())
            ]

    def resource(self, resource_id: str) -> dict[str, Any] | None:
        """The stored resource, or None."""
        with self._lock:
            found = self.resources.get(resource_id.lower())
            return copy.deepcopy(found) if found else None

    def calls(self, method: str | None = None, path_contains: str = "") -> list[RecordedRequest]:
        """Recorded requests, filtered by method and a path substring (case-insensitive)."""
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method.upper()) and path_contains.lower() in r.path.lower()
            ]

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self.requests.clear()

    # -- request handling (called from the handler threads) ---------------------------------------

    def handle(self, request: RecordedRequest) -> tuple[int, dict[str, str], Any]:
        with self._lock:
            self.requests.append(request)
            fault = self._take_fault(request)
            if fault is not None:
                return fault.status, fault.headers, _error(fault.code, fault.message)
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return 401, {}, _error("AuthenticationFailed", "missing or wrong bearer token")
            if "api-version" not in request.query:
                return 400, {}, _error("MissingApiVersionParameter", "api-version is required")
            path = request.path
            if match := _OPERATION.match(path):
                return self._operation(match)
            if match := _RESOURCE.match(path):
                if match["name"] is None:
                    if request.method == "GET":
                        return self._list(match, path, request.query)
                elif request.method == "GET":
                    return self._get(match)
                elif request.method == "PUT":
                    return self._put(match, request.body)
                elif request.method == "DELETE":
                    return self._delete(match)
            return 404, {}, _error("NoRoute", f"the fake ARM has no route {request.method} {path}")

    def _take_fault(self, request: RecordedRequest) -> _Fault | None:
        for fault in self._faults:
            if (
                fault.remaining > 0
                and fault.method == request.method
                and fault.path_contains.lower() in request.path.lower()
            ):
                fault.remaining -= 1
                return fault
        return None

    def _rid(self, match: re.Match[str], name: str | None = None, kind: str | None = None) -> str:
        kind = kind or _TYPES[match["type"].lower()]
        name = match["name"] if name is None else name
        return f"/subscriptions/{match['sub']}/resourceGroups/{match['rg']}/providers/{_provider(kind)}/{kind}/{name}"

    def _materialize(self, match: re.Match[str], body: dict[str, Any]) -> dict[str, Any]:
        """What ARM stores for a PUT body: ids, names, types, etags and provisioning states filled in."""
        stored = copy.deepcopy(body)
        kind = _TYPES[match["type"].lower()]
        rid = self._rid(match)
        stored.update(id=rid, name=match["name"], type=f"{_provider(kind)}/{kind}", etag=f'W/"{uuid.uuid4()}"')
        props = stored.setdefault("properties", {})
        props["provisioningState"] = "Succeeded"
        child = {
            "virtualNetworks": "subnets",
            "networkSecurityGroups": "securityRules",
            "networkInterfaces": "ipConfigurations",
        }.get(kind)
        for item in (props.get(child) or []) if child else []:
            item["id"] = f"{rid}/{child}/{item['name']}"
            item["type"] = f"{_PROVIDER}/{kind}/{child}"
            item.setdefault("properties", {})["provisioningState"] = "Succeeded"
        if kind == "networkInterfaces":
            previous = self.resources.get(rid.lower())
            for i, item in enumerate(props.get("ipConfigurations") or []):
                old = (previous or {}).get("properties", {}).get("ipConfigurations") or []
                kept = old[i]["properties"].get("privateIPAddress") if i < len(old) else None
                item["properties"]["privateIPAddress"] = kept or self._next_private_ip()
                item["properties"].setdefault("privateIPAllocationMethod", "Dynamic")
        elif kind == "virtualMachines":
            props["vmId"] = str(uuid.uuid4())
            os_disk = props.setdefault("storageProfile", {}).setdefault("osDisk", {})
            disk_name = os_disk.get("name") or f"{match['name']}_OsDisk_1_{uuid.uuid4().hex}"
            disk_id = self._rid(match, name=disk_name, kind="disks")
            os_disk.update(name=disk_name, managedDisk={**(os_disk.get("managedDisk") or {}), "id": disk_id})
            if disk_id.lower() not in self.resources:
                # Azure creates the OS disk from the image; it does not copy the VM's tags to it.
                self.resources[disk_id.lower()] = {
                    "id": disk_id,
                    "name": disk_name,
                    "type": f"{_COMPUTE}/disks",
                    "location": stored.get("location"),
                    "properties": {
                        "diskSizeGB": os_disk.get("diskSizeGB"),
                        "provisioningState": "Succeeded",
                        "diskState": "Attached",
                    },
                    "managedBy": rid,
                }
        return stored

    def _next_private_ip(self) -> str:
        if self.private_ip is not None:
            return self.private_ip
        used = {
            c["properties"].get("privateIPAddress")
            for r in self.resources.values()
            if r["type"].lower().endswith("/networkinterfaces")
            for c in r["properties"].get("ipConfigurations") or []
        }
        return next(f"10.0.0.{i}" for i in range(4, 255) if f"10.0.0.{i}" not in used)

    def _new_operation(self, kind: str, location: str, sub: str, provider: str = _PROVIDER) -> str:
        op_id = str(uuid.uuid4())
        error = self._operation_faults.pop(0) if kind == "async" and self._operation_faults else None
        self._operations[op_id] = _Operation(kind=kind, error=error)
        segment = "operations" if kind == "async" else "operationResults"
        loc = re.sub(r"\s+", "", location or "westeurope").lower()
        return (
            f"{self.base_url}/subscriptions/{sub}/providers/{provider}/locations/{loc}/{segment}/{op_id}"
            "?api-version=2026-03-01"
        )

    def _operation(self, match: re.Match[str]) -> tuple[int, dict[str, str], Any]:
        op = self._operations.get(match["op"])
        if op is None:
            return 404, {}, _error("OperationNotFound", f"no operation {match['op']}")
        op.polls += 1
        if op.kind == "async":
            if op.polls == 1:
                return 200, {}, {"status": "InProgress"}
            if op.error is not None:
                return 200, {}, {"status": "Failed", "error": op.error}
            return 200, {}, {"status": "Succeeded"}
        if op.polls == 1:
            return 202, {"Retry-After": "0"}, None
        return 204, {}, None

    def _get(self, match: re.Match[str]) -> tuple[int, dict[str, str], Any]:
        stored = self.resources.get(self._rid(match).lower())
        if stored is None:
            kind = _TYPES[match["type"].lower()]
            return (
                404,
                {},
                _error(
                    "ResourceNotFound",
                    f"The Resource '{_provider(kind)}/{kind}/{match['name']}' under resource group "
                    f"'{match['rg']}' was not found.",
                ),
            )
        return 200, {}, stored

    def _list(self, match: re.Match[str], path: str, query: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        prefix = self._rid(match, name="").lower()
        items = [r for key, r in sorted(self.resources.items()) if key.startswith(prefix)]
        start = int(query.get("$skiptoken", "0"))
        page = items[start : start + self.page_size]
        body: dict[str, Any] = {"value": page}
        if start + self.page_size < len(items):
            token = start + self.page_size
            body["nextLink"] = f"{self.base_url}{path}?api-version={query['api-version']}&$skiptoken={token}"
        return 200, {}, body

    def _put(self, match: re.Match[str], body: Any) -> tuple[int, dict[str, str], Any]:
        if not isinstance(body, dict) or not body.get("location"):
            return (
                400,
                {},
                _error("LocationRequired", "The location property is required for this definition."),
            )
        for subnet in (body.get("properties") or {}).get("subnets") or []:
            nsg = ((subnet.get("properties") or {}).get("networkSecurityGroup") or {}).get("id")
            if nsg and nsg.lower() not in self.resources:
                return (
                    400,
                    {},
                    _error("InvalidResourceReference", f"Resource {nsg} referenced by subnet was not found."),
                )
        invalid = _invalid_body(_TYPES[match["type"].lower()], body)
        if invalid:
            return 400, {}, _error("InvalidParameter", invalid)
        problems = _schema_problems(_TYPES[match["type"].lower()], body)
        if problems:
            return 400, {}, _error("InvalidRequestContent", "; ".join(problems))
        missing = self._missing_reference(match, body)
        if missing:
            return (
                400,
                {},
                _error("InvalidResourceReference", f"Resource {missing} referenced by the request was not found."),
            )
        rid = self._rid(match).lower()
        status = 200 if rid in self.resources else 201
        stored = self._materialize(match, body)
        self.resources[rid] = stored
        if _TYPES[match["type"].lower()] == "virtualMachines" and self.on_vm_created is not None:
            self.on_vm_created(copy.deepcopy(stored))
        answer = copy.deepcopy(stored)
        answer["properties"]["provisioningState"] = "Updating"
        provider = _provider(_TYPES[match["type"].lower()])
        operation = self._new_operation("async", body["location"], match["sub"], provider)
        return status, {"Azure-AsyncOperation": operation, "Retry-After": "0"}, answer

    def _missing_reference(self, match: re.Match[str], body: dict[str, Any]) -> str | None:
        """The first resource a NIC or VM body references that does not exist (a subnet must be in
        its VNet), or None."""
        kind = _TYPES[match["type"].lower()]
        refs: list[str] = []
        if kind == "networkInterfaces":
            refs.append(_ref(body, "properties", "networkSecurityGroup"))
            for conf in (body.get("properties") or {}).get("ipConfigurations") or []:
                refs += [_ref(conf, "properties", "subnet"), _ref(conf, "properties", "publicIPAddress")]
        elif kind == "virtualMachines":
            profile = ((body.get("properties") or {}).get("networkProfile") or {}).get("networkInterfaces") or []
            refs += [(nic.get("id") or "").lower() for nic in profile]
        for ref in filter(None, refs):
            vnet, _, subnet = ref.partition("/subnets/")
            if subnet:
                stored = self.resources.get(vnet)
                names = {s["name"].lower() for s in (stored or {}).get("properties", {}).get("subnets") or []}
                if subnet not in names:
                    return ref
            elif ref not in self.resources:
                return ref
        return None

    def _delete(self, match: re.Match[str]) -> tuple[int, dict[str, str], Any]:
        rid = self._rid(match).lower()
        stored = self.resources.get(rid)
        if stored is None:
            return 204, {}, None
        in_use = self._attached_to(rid)
        if in_use is not None:
            code = {
                "networkinterfaces": (400, "NicInUse"),
                "publicipaddresses": (400, "PublicIPAddressCannotBeDeleted"),
                "disks": (409, "OperationNotAllowed"),
            }[match["type"].lower()]
            return (
                code[0],
                {},
                _error(code[1], f"{stored['id']} is in use by {in_use} and cannot be deleted."),
            )
        if match["type"].lower() == "networksecuritygroups":
            for other in self.resources.values():
                for subnet in (other.get("properties") or {}).get("subnets") or []:
                    ref = ((subnet.get("properties") or {}).get("networkSecurityGroup") or {}).get("id", "")
                    if ref.lower() == rid:
                        return (
                            409,
                            {},
                            _error(
                                "InUseNetworkSecurityGroupCannotBeDeleted",
                                f"Network security group {stored['id']} cannot be deleted because it is "
                                f"in use by subnet {subnet.get('id')}.",
                            ),
                        )
        del self.resources[rid]
        if match["type"].lower() == "virtualmachines":
            self._delete_with_vm(stored)
            if self.on_vm_deleted is not None:
                self.on_vm_deleted(copy.deepcopy(stored))
        provider = _provider(_TYPES[match["type"].lower()])
        operation = self._new_operation("location", stored.get("location", ""), match["sub"], provider)
        return 202, {"Location": operation, "Retry-After": "0"}, None

    def _delete_with_vm(self, vm: dict[str, Any]) -> None:
        """Delete the NICs and OS disk a deleted VM marked ``deleteOption: Delete``."""
        props = vm.get("properties") or {}
        for nic in (props.get("networkProfile") or {}).get("networkInterfaces") or []:
            if (nic.get("properties") or {}).get("deleteOption") == "Delete":
                self.resources.pop((nic.get("id") or "").lower(), None)
        os_disk = (props.get("storageProfile") or {}).get("osDisk") or {}
        if os_disk.get("deleteOption") == "Delete":
            self.resources.pop(_ref(os_disk, "managedDisk"), None)

    def _attached_to(self, rid: str) -> str | None:
        """The id of the VM (or NIC) that still uses NIC, disk or public IP ``rid``, or None."""
        for other in self.resources.values():
            kind = other["type"].rsplit("/", 1)[-1].lower()
            props = other.get("properties") or {}
            if kind == "virtualmachines":
                nics = (props.get("networkProfile") or {}).get("networkInterfaces") or []
                disk = _ref(props.get("storageProfile") or {}, "osDisk", "managedDisk")
                if rid in {(n.get("id") or "").lower() for n in nics} or rid == disk:
                    return other["id"]
            elif kind == "networkinterfaces":
                for conf in props.get("ipConfigurations") or []:
                    if _ref(conf, "properties", "publicIPAddress") == rid:
                        return other["id"]
        return None


def _invalid_body(kind: str, body: dict[str, Any]) -> str | None:
    """ARM's answer to a NIC or VM body missing what it requires (e.g. snake_case keys at the top)."""
    props = body.get("properties") or {}
    if kind == "networkInterfaces":
        configs = props.get("ipConfigurations") or []
        if not configs or not all(_ref(c, "properties", "subnet") for c in configs):
            return "A network interface needs properties.ipConfigurations, each with a subnet."
    if kind == "virtualMachines":
        required = {
            "hardwareProfile": (props.get("hardwareProfile") or {}).get("vmSize"),
            "storageProfile": props.get("storageProfile"),
            "osProfile": props.get("osProfile"),
            "networkProfile": (props.get("networkProfile") or {}).get("networkInterfaces"),
        }
        for name, value in required.items():
            if not value:
                return f"Required parameter '{name}' is missing (null)."
    return None


def _schema_problems(kind: str, body: dict[str, Any]) -> list[str]:
    """The body against the SDK model of its type and API version (``tests/arm_schema.py``): unknown or
    misplaced keys, enum values, required properties, literal types. Read-only values are ignored, as ARM
    ignores them on a PUT (a GET-modify-PUT sends them back)."""
    model = arm_schema.model_for(f"{_provider(kind)}/{kind}")
    return [str(p) for p in arm_schema.check(body, model, allow_readonly=True)]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client drops a kept-alive connection; report anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    arm: FakeArm
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; don't let them wait on ACKs

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        request = RecordedRequest(
            method=self.command,
            path=parts.path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            body=read_json_body(self),
            headers={k.lower(): v for k, v in self.headers.items()},
        )
        status, headers, payload = self.arm.handle(request)
        send_json(self, status, headers, payload)

    do_GET = do_PUT = do_DELETE = do_POST = do_PATCH = _serve  # noqa: N815 - http.server's names
