"""A local fake of the Azure Resource Manager routes ``azure-mgmt-network``/``-compute`` use.

Resource types: VNets (and a subnet's GET), NSGs, NAT gateways and, for the cluster VMs, network
interfaces, public IPs, virtual machines and managed disks; storage accounts (``listKeys``) to show what a
role reaches; user-assigned identities and role assignments (tests/arm_identity.py).

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
  given status, ARM error code and headers (429 + ``Retry-After``, 500, 409, 403, 404, ...);
* RBAC, when given an :class:`~tests.rbac.Rbac` (the Bicep's role assignments): every request needs its
  action (``<provider>/<type>/read|write|delete``, ``.../listKeys/action``) allowed at the resource's scope,
  and a PUT the ``join``/``assign`` actions on what its body links (subnets, NSGs, NAT gateways, public
  IPs, NICs, user-assigned identities), else 403 ``AuthorizationFailed``/``LinkedAuthorizationFailed`` in
  ARM's words; inheritance flows down only (a subnet's role gives nothing on its VNet);
* outbound access as Azure decides it (:meth:`FakeArm.outbound`): a VM reaches the Internet only through a
  NAT gateway on its subnet, a public IP on its NIC, or a subnet with ``defaultOutboundAccess`` on (the
  default only for subnets written with an API version before 2025-07-01: private subnets by default).

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

from tests import arm_identity, arm_schema
from tests.entra_standin import Directory
from tests.json_http import read_json_body, send_json
from tests.rbac import Rbac, arm_refusal, assigned_identities

_PROVIDER = "Microsoft.Network"
_COMPUTE = "Microsoft.Compute"
_TYPES = {
    "virtualnetworks": "virtualNetworks",
    "networksecuritygroups": "networkSecurityGroups",
    "networkinterfaces": "networkInterfaces",
    "publicipaddresses": "publicIPAddresses",
    "virtualmachines": "virtualMachines",
    "disks": "disks",
    "natgateways": "natGateways",
    "storageaccounts": "storageAccounts",
}
_PROVIDERS = {"virtualMachines": _COMPUTE, "disks": _COMPUTE, "storageAccounts": "Microsoft.Storage"}
"""Provider of each type; the rest are Microsoft.Network."""
_RESOURCE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"(?P<provider>Microsoft\.Network|Microsoft\.Compute|Microsoft\.Storage)/"
    r"(?P<type>virtualNetworks|networkSecurityGroups|networkInterfaces|publicIPAddresses|virtualMachines|disks"
    r"|natGateways|storageAccounts)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<child>subnets)/(?P<child_name>[^/]+)|/(?P<action>listKeys))?)?$",
    re.IGNORECASE,
)
PRIVATE_SUBNETS_FROM = "2025-07-01"
"""Subnets written with this Microsoft.Network API version or later default to ``defaultOutboundAccess: false``."""
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
    resource_id: str = ""


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
    rbac: Rbac | None = None
    """The caller's role assignments (tests/rbac.py); None: every request is allowed."""
    principal_id: str = "11111111-2222-3333-4444-555555555555"
    """The caller's object id, as ARM names it in a 403."""
    api_versions: dict[str, str] = field(default_factory=dict)
    """The API version of the last PUT of each resource (lower-cased id)."""
    directory: Directory = field(default_factory=Directory)
    """Entra's view: the identities created here and their role assignments (tests/arm_identity.py)."""
    identity_created: dict[str, float] = field(default_factory=dict)
    """When each identity's principal was created (``time.monotonic``), for Entra's replication delay."""

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

    def fail_next_operation(self, code: str, message: str, path_contains: str = "") -> None:
        """The next PUT (whose path contains ``path_contains``) has its async operation end ``Failed`` with
        this error; the resource stays, ``provisioningState: Failed`` (a VM that failed to allocate never runs)."""
        with self._lock:
            self._operation_faults.append({"code": code, "message": message, "path": path_contains.lower()})

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

    def seed(self, resource_id: str, body: dict[str, Any], api_version: str = "2026-03-01") -> dict[str, Any]:
        """Store a resource as if someone had created it earlier with ``api_version`` (no request recorded,
        no access check); a VM gets its OS disk as in :meth:`handle`."""
        match = _RESOURCE.match(resource_id)
        assert match and match["name"], resource_id
        with self._lock:
            stored = self._materialize(match, body)
            self.resources[stored["id"].lower()] = stored
            self.api_versions[stored["id"].lower()] = api_version
            return stored

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """Stored resources of one type (``"virtualMachines"``, ``"disks"``, ...), sorted by id."""
        with self._lock:
            return [
                copy.deepcopy(r)
                for key, r in sorted(self.resources.items())
                if r["type"].lower().endswith("/" + kind.lower())
            ]

    def vm_identities(self, vm_name: str) -> list[str]:
        """The resource ids of the user-assigned identities attached to VM ``vm_name`` (none when it is gone).
        Without the server's lock: the instance metadata asks while a VM's PUT (which boots it) holds it."""
        resources = list(self.resources.values())  # one atomic copy
        vms = [r for r in resources if r["type"].endswith("/virtualMachines") and r["name"] == vm_name]
        return [i for vm in vms for i in ((vm.get("identity") or {}).get("userAssignedIdentities") or {})]

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
            reply = arm_identity.route(self, request)
            if reply is not None:
                return reply
            if match := _OPERATION.match(path):
                return self._operation(match)  # an operation's status is its caller's to read
            if match := _RESOURCE.match(path):
                denied = self._authorize(request, match)
                if denied is not None:
                    return denied
                if match["child"]:
                    if request.method == "GET":
                        return self._get_subnet(match)
                elif match["action"]:
                    if request.method == "POST":
                        return self._list_keys(match)
                elif match["name"] is None:
                    if request.method == "GET":
                        return self._list(match, path, request.query)
                elif request.method == "GET":
                    return self._get(match)
                elif request.method == "PUT":
                    return self._put(match, request.body, request.query["api-version"])
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

    def _new_operation(
        self, kind: str, location: str, sub: str, provider: str = _PROVIDER, resource_id: str = ""
    ) -> str:
        op_id = str(uuid.uuid4())
        error = None
        if kind == "async":
            fault = next((f for f in self._operation_faults if f["path"] in resource_id.lower()), None)
            if fault is not None:
                self._operation_faults.remove(fault)
                error = {"code": fault["code"], "message": fault["message"]}
        self._operations[op_id] = _Operation(kind=kind, error=error, resource_id=resource_id.lower())
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
                stored = self.resources.get(op.resource_id)
                if stored is not None and stored["properties"].get("provisioningState") != "Failed":
                    stored["properties"]["provisioningState"] = "Failed"
                    if stored["type"].endswith("/virtualMachines") and self.on_vm_deleted is not None:
                        self.on_vm_deleted(copy.deepcopy(stored))  # never allocated: nothing runs
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

    def _put(self, match: re.Match[str], body: Any, api_version: str = "") -> tuple[int, dict[str, str], Any]:
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
        self.api_versions[rid] = api_version
        if _TYPES[match["type"].lower()] == "virtualMachines" and self.on_vm_created is not None:
            self.on_vm_created(copy.deepcopy(stored))
        answer = copy.deepcopy(stored)
        answer["properties"]["provisioningState"] = "Updating"
        provider = _provider(_TYPES[match["type"].lower()])
        operation = self._new_operation("async", body["location"], match["sub"], provider, rid)
        if self._operations[operation.split("/")[-1].split("?")[0]].error is not None:
            # Azure's operation fails on its own, whether or not anyone polls it: the resource ends Failed.
            stored["properties"]["provisioningState"] = "Failed"
            if stored["type"].endswith("/virtualMachines") and self.on_vm_deleted is not None:
                self.on_vm_deleted(copy.deepcopy(stored))  # never allocated: nothing runs
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
        elif kind == "virtualNetworks":
            refs += [_ref(subnet, "properties", "natGateway") for subnet in _subnets(body)]
        elif kind == "natGateways":
            refs += [
                (ip.get("id") or "").lower() for ip in (body.get("properties") or {}).get("publicIpAddresses") or []
            ]
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
                "natgateways": (400, "InUseNatGatewayCannotBeDeleted"),
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
            elif kind == "natgateways":
                if rid in {(ip.get("id") or "").lower() for ip in props.get("publicIpAddresses") or []}:
                    return other["id"]
            elif kind == "virtualnetworks":
                for subnet in props.get("subnets") or []:
                    if _ref(subnet, "properties", "natGateway") == rid:
                        return str(subnet.get("id") or other["id"])
        return None

    # -- what Azure decides beyond storing resources ---------------------------------------------------

    def outbound(self, vm: dict[str, Any]) -> str | None:
        """How a VM reaches the Internet (and Storage's public endpoints), or None when it cannot: a
        public IP on its NIC, a NAT gateway on its subnet, or the subnet's default outbound access (on
        only when set, or by default for a subnet written with an API version before 2025-07-01)."""
        with self._lock:
            nics = ((vm.get("properties") or {}).get("networkProfile") or {}).get("networkInterfaces") or []
            for ref in nics:
                nic = self.resources.get((ref.get("id") or "").lower()) or {}
                for conf in (nic.get("properties") or {}).get("ipConfigurations") or []:
                    if _ref(conf, "properties", "publicIPAddress"):
                        return "a public IP on its network interface"
                    vnet_id, _, name = _ref(conf, "properties", "subnet").partition("/subnets/")
                    vnet = self.resources.get(vnet_id) or {}
                    subnet = next((s for s in _subnets(vnet) if s["name"].lower() == name), None)
                    if subnet is None:
                        continue
                    props = subnet.get("properties") or {}
                    if _ref(subnet, "properties", "natGateway") in self.resources:
                        return "the NAT gateway of its subnet"
                    default = self.api_versions.get(vnet_id, "") < PRIVATE_SUBNETS_FROM
                    if props.get("defaultOutboundAccess", default):
                        return "its subnet's default outbound access"
            return None

    def _authorize(self, request: RecordedRequest, match: re.Match[str]) -> tuple[int, dict[str, str], Any] | None:
        """ARM's access check (403 in ARM's words), when this server was given the caller's roles."""
        if self.rbac is None:
            return None
        kind = _TYPES[match["type"].lower()]
        resource_type = f"{_provider(kind)}/{kind}"
        if match["name"] is None:
            scope = f"/subscriptions/{match['sub']}/resourceGroups/{match['rg']}"
        else:
            scope = self._rid(match)
        if match["child"]:
            resource_type += "/subnets"
            scope += f"/subnets/{match['child_name']}"
        verb = {"GET": "read", "PUT": "write", "DELETE": "delete"}.get(request.method, "action")
        action = f"{resource_type}/listKeys/action" if match["action"] else f"{resource_type}/{verb}"
        linked = _linked(kind, request.body) if request.method == "PUT" and isinstance(request.body, dict) else []
        return arm_refusal(self.rbac, self.principal_id, action, scope, linked)

    def _get_subnet(self, match: re.Match[str]) -> tuple[int, dict[str, str], Any]:
        vnet = self.resources.get(self._rid(match).lower())
        subnet = next((s for s in _subnets(vnet or {}) if s["name"].lower() == match["child_name"].lower()), None)
        if subnet is None:
            return 404, {}, _error("NotFound", f"Resource {self._rid(match)}/subnets/{match['child_name']} not found.")
        return 200, {}, subnet

    def _list_keys(self, match: re.Match[str]) -> tuple[int, dict[str, str], Any]:
        if self._rid(match).lower() not in self.resources:
            return self._get(match)
        keys = [{"keyName": f"key{i}", "value": uuid.uuid4().hex, "permissions": "FULL"} for i in (1, 2)]
        return 200, {}, {"keys": keys}


def _subnets(vnet: dict[str, Any]) -> list[dict[str, Any]]:
    return list((vnet.get("properties") or {}).get("subnets") or [])


def _linked(kind: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    """The (action, resource id) pairs a PUT body links, which ARM checks besides the write itself."""
    props = body.get("properties") or {}
    net = "Microsoft.Network"
    linked: list[tuple[str, str]] = []
    if kind == "networkInterfaces":
        linked.append((f"{net}/networkSecurityGroups/join/action", _ref(body, "properties", "networkSecurityGroup")))
        for conf in props.get("ipConfigurations") or []:
            linked.append((f"{net}/virtualNetworks/subnets/join/action", _ref(conf, "properties", "subnet")))
            linked.append((f"{net}/publicIPAddresses/join/action", _ref(conf, "properties", "publicIPAddress")))
    elif kind == "virtualNetworks":
        for subnet in _subnets(body):
            linked.append(
                (f"{net}/networkSecurityGroups/join/action", _ref(subnet, "properties", "networkSecurityGroup"))
            )
            linked.append((f"{net}/natGateways/join/action", _ref(subnet, "properties", "natGateway")))
    elif kind == "natGateways":
        for ip in props.get("publicIpAddresses") or []:
            linked.append((f"{net}/publicIPAddresses/join/action", (ip.get("id") or "").lower()))
    elif kind == "virtualMachines":
        for nic in (props.get("networkProfile") or {}).get("networkInterfaces") or []:
            linked.append((f"{net}/networkInterfaces/join/action", (nic.get("id") or "").lower()))
        linked += assigned_identities(body)
    return [(action, rid) for action, rid in linked if rid]


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
