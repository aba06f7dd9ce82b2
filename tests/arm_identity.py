"""The local ARM server's identity routes: user-assigned managed identities and role assignments, as
``azure-mgmt-msi`` and ``azure-mgmt-authorization`` call them, checked as ARM checks them.

* ``PUT``/``GET``/``DELETE .../providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>``: synchronous;
  a new identity gets a client id and a principal id (:class:`tests.entra_standin.Directory`); ``location``
  is required; the caller needs ``userAssignedIdentities/write|read|delete`` there.
* ``PUT``/``GET``/``DELETE <scope>/providers/Microsoft.Authorization/roleAssignments/<guid>``: the name must be
  a GUID (400 ``InvalidRoleAssignmentId``); the principal must exist (400 ``PrincipalNotFound``), and a
  principal younger than :data:`REPLICATION_S` is not found yet unless the request says its
  ``principalType`` (Entra's replication delay, and Microsoft's documented way around it); the same
  role, principal and scope under another name is 409 ``RoleAssignmentExists``; a ``principalType`` other
  than the principal's is 400 ``UnmatchedPrincipalType`` (the SDK's model defaults it to ``User``); the caller needs
  ``roleAssignments/write|delete`` at the scope, and when that comes from an assignment with a condition
  (a constrained delegation), the role assigned must be one the condition names
  (:attr:`tests.rbac.Assignment.assignable`), else 403 ``AuthorizationFailed``.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from tests.entra_standin import Directory

if TYPE_CHECKING:
    from tests.arm_server import FakeArm, RecordedRequest

IDENTITY = re.compile(
    r"^(?P<id>/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ManagedIdentity/"
    r"userAssignedIdentities/(?P<name>[^/]+))$",
    re.IGNORECASE,
)
IDENTITIES = re.compile(
    r"^(?P<group>/subscriptions/[^/]+/resourceGroups/[^/]+)/providers/Microsoft\.ManagedIdentity/"
    r"userAssignedIdentities/?$",
    re.IGNORECASE,
)
ASSIGNMENTS = re.compile(r"^(?P<scope>/.+?)/providers/Microsoft\.Authorization/roleAssignments/?$", re.IGNORECASE)
ASSIGNMENT = re.compile(r"^(?P<scope>/.+?)/providers/Microsoft\.Authorization/roleAssignments/(?P<name>[^/]+)$", re.I)
REPLICATION_S = 30.0
"""How long a new principal is unknown to a role assignment that does not give its ``principalType``."""
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)

Reply = tuple[int, dict[str, str], Any]


def route(arm: FakeArm, request: RecordedRequest) -> Reply | None:
    """The reply to an identity or role-assignment request, or None when the path is neither."""
    if match := IDENTITY.match(request.path):
        return _identity(arm, request, match["id"], match["name"])
    if request.method == "GET" and (match := IDENTITIES.match(request.path)):
        return _listed(arm, "Microsoft.ManagedIdentity/userAssignedIdentities/read", match["group"], request)
    if request.method == "GET" and (match := ASSIGNMENTS.match(request.path)):
        return _listed(arm, "Microsoft.Authorization/roleAssignments/read", match["scope"], request)
    if match := ASSIGNMENT.match(request.path):
        return _assignment(arm, request, match["scope"], match["name"])
    return None


def _denied(arm: FakeArm, action: str, scope: str) -> Reply:
    from tests.arm_server import _error

    message = (
        f"The client '{arm.principal_id}' with object id '{arm.principal_id}' does not have authorization to "
        f"perform action '{action}' over scope '{scope}' or the scope is invalid. If access was recently "
        "granted, please refresh your credentials."
    )
    return 403, {}, _error("AuthorizationFailed", message)


def _listed(arm: FakeArm, action: str, scope: str, request: RecordedRequest) -> Reply:
    """A listing (one page): a group's identities, or the role assignments at, above or below a scope,
    filtered by ``principalId eq '<id>'`` when the request asks (ARM's ``$filter``)."""
    if arm.rbac is not None and not arm.rbac.allowed(action, scope):
        return _denied(arm, action, scope)
    kind = action.rsplit("/", 1)[0]
    wanted = re.fullmatch(r"\s*principalId\s+eq\s+'([^']+)'\s*", request.query.get("$filter", ""))
    found = []
    for resource in list(arm.resources.values()):
        if resource.get("type", "").lower() != kind.lower():
            continue
        if kind.endswith("roleAssignments"):
            theirs = resource["properties"]
            there = theirs["scope"].lower()
            if not (there.startswith(scope.lower()) or scope.lower().startswith(there)):
                continue
            if wanted and theirs["principalId"] != wanted.group(1):
                continue
        elif not resource["id"].lower().startswith(scope.lower() + "/"):
            continue
        found.append(resource)
    return 200, {}, {"value": found}


def _identity(arm: FakeArm, request: RecordedRequest, rid: str, name: str) -> Reply:
    from tests.arm_server import _error

    verb = {"GET": "read", "PUT": "write", "DELETE": "delete"}.get(request.method)
    action = f"Microsoft.ManagedIdentity/userAssignedIdentities/{verb}"
    if verb is None:
        return 405, {}, _error("MethodNotAllowed", request.method)
    if arm.rbac is not None and not arm.rbac.allowed(action, rid):
        return _denied(arm, action, rid)
    directory: Directory = arm.directory
    stored = arm.resources.get(rid.lower())
    if request.method == "GET":
        if stored is None:
            return 404, {}, _error("ResourceNotFound", f"The Resource '{rid}' was not found.")
        return 200, {}, stored
    if request.method == "DELETE":
        if stored is None:
            return 204, {}, None
        del arm.resources[rid.lower()]
        directory.forget_identity(rid)
        return 200, {}, None
    body = request.body if isinstance(request.body, dict) else {}
    if not body.get("location"):
        return 400, {}, _error("LocationRequired", "The location property is required for this definition.")
    identity = directory.new_identity(rid)
    arm.identity_created.setdefault(identity.principal_id, time.monotonic())
    answer = {
        "id": rid,
        "name": name,
        "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
        "location": body["location"],
        "tags": body.get("tags") or {},
        "properties": {
            "tenantId": "00000000-0000-0000-0000-00000000beef",
            "principalId": identity.principal_id,
            "clientId": identity.client_id,
        },
    }
    arm.resources[rid.lower()] = answer
    return (200 if stored is not None else 201), {}, answer


def _assignment(arm: FakeArm, request: RecordedRequest, scope: str, name: str) -> Reply:
    from tests.arm_server import _error

    rid = f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"
    directory: Directory = arm.directory
    if not _GUID.match(name):
        return 400, {}, _error("InvalidRoleAssignmentId", f"The role assignment ID '{name}' is not valid.")
    verb = {"GET": "read", "PUT": "write", "DELETE": "delete"}.get(request.method)
    action = f"Microsoft.Authorization/roleAssignments/{verb}"
    if verb is None:
        return 405, {}, _error("MethodNotAllowed", request.method)
    if arm.rbac is not None and not arm.rbac.allowed(action, scope):
        return _denied(arm, action, scope)
    stored = arm.resources.get(rid.lower())
    if request.method == "GET":
        return (200, {}, stored) if stored else (404, {}, _error("RoleAssignmentNotFound", f"{rid} not found"))
    if request.method == "DELETE":
        if stored is None:
            return 204, {}, None
        role = stored["properties"]["roleDefinitionId"].rsplit("/", 1)[-1]
        if arm.rbac is not None and not arm.rbac.may_assign(action, scope, role, "ServicePrincipal"):
            return _denied(arm, action, scope)
        del arm.resources[rid.lower()]
        directory.unassign(rid)
        return 200, {}, stored
    props = (request.body or {}).get("properties") or {}
    role_definition, principal = str(props.get("roleDefinitionId") or ""), str(props.get("principalId") or "")
    role = role_definition.rsplit("/", 1)[-1].lower()
    principal_type = str(props.get("principalType") or "")
    if arm.rbac is not None and not arm.rbac.may_assign(action, scope, role, principal_type):
        return _denied(arm, action, scope)
    created = arm.identity_created.get(principal)
    replicating = created is not None and time.monotonic() - created < REPLICATION_S
    if directory.principal(principal) is None or (replicating and not props.get("principalType")):
        message = f"Principal {principal.replace('-', '')} does not exist in the directory {uuid.UUID(int=0)}."
        return 400, {}, _error("PrincipalNotFound", message)
    if principal_type and principal_type != "ServicePrincipal":  # every principal here is a managed identity's
        message = f"The PrincipalId '{principal}' has type 'ServicePrincipal', which is different from specified "
        return 400, {}, _error("UnmatchedPrincipalType", message + f"PrincipalType '{principal_type}'.")
    for other in list(arm.resources.values()):
        if other.get("type") != "Microsoft.Authorization/roleAssignments" or other["id"].lower() == rid.lower():
            continue
        theirs = other["properties"]
        if (theirs["scope"].lower(), theirs["principalId"], theirs["roleDefinitionId"].lower()) == (
            scope.lower(),
            principal,
            role_definition.lower(),
        ):
            return 409, {}, _error("RoleAssignmentExists", "The role assignment already exists.")
    answer = {
        "id": rid,
        "name": name,
        "type": "Microsoft.Authorization/roleAssignments",
        "properties": {
            "scope": scope,
            "roleDefinitionId": role_definition,
            "principalId": principal,
            "principalType": props.get("principalType") or "ServicePrincipal",
        },
    }
    status = 200 if stored is not None else 201
    arm.resources[rid.lower()] = answer
    directory.assign(rid, scope, role, principal)
    return status, {}, answer
