"""Azure RBAC as the local ARM server enforces it: the role assignments ``infra/*.bicep`` declares for the
Function App, the role definitions they name, and the access check ARM makes.

What is read, and how:

* the deployment's modules (``infra/main.bicep``, parsed with pycep): which module file, at which scope
  (the control-plane resource group, or ``resourceGroup(experimentRgName)``), deployed or not (a module's
  ``if`` condition names a parameter: :class:`Deployment.flags`);
* in each module, every ``Microsoft.Authorization/roleAssignments`` resource whose ``principalId`` is the
  Function App's (the module parameter ``principalId`` that ``main.bicep`` binds to
  ``functionApp.outputs.principalId``); an assignment to another identity (the VMs', the AzureML compute's,
  named as ``<identity>.properties.principalId``) is not the app's and is listed in :attr:`Rbac.others`, and a
  principal written any other way stops the reading (so no new form is counted for the app unexamined). Then its
  ``scope`` (absent: the
  module's resource group; a symbol: the ``existing`` resource it names, parents included, its name a
  module parameter given by :class:`Deployment.names`) and its role: ``roleIds.<key>`` (the GUIDs of
  ``role-definitions.bicep``) or a ``Microsoft.Authorization/roleDefinitions`` resource of the same
  module (a custom role: its ``permissions`` as written);
* built-in roles' permissions from ``tests/data/builtin_roles.json`` (copied from Microsoft's built-in
  roles reference, with its source and date). A role named there but missing from that file grants
  nothing here (stricter than Azure, never kinder), and is listed in :attr:`Rbac.unknown_roles`.

The check: an action is allowed at a scope when some assignment at that scope *or above it* (inheritance
flows down only) has a role whose ``actions`` match it and whose ``notActions`` do not (``*`` matches any
run of characters, case-insensitively, as in Azure).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
BUILTIN_ROLES = Path(__file__).parent / "data" / "builtin_roles.json"
STANDIN_REGISTRY = "crimgrhpostandin"
"""The deployment's image registry as :func:`function_app_rbac` names it (in the control-plane group)."""


def registry_id(subscription_id: str, control_resource_group: str = "rg-control") -> str:
    """The ARM id of that registry: the scope of the Function App's AcrPull delegation."""
    group = f"/subscriptions/{subscription_id}/resourceGroups/{control_resource_group}"
    return f"{group}/providers/Microsoft.ContainerRegistry/registries/{STANDIN_REGISTRY}"


@dataclass(frozen=True)
class RoleDefinition:
    """A role's name and permissions (one permissions block, as every built-in role has)."""

    name: str
    actions: tuple[str, ...]
    not_actions: tuple[str, ...] = ()
    data_actions: tuple[str, ...] = ()
    not_data_actions: tuple[str, ...] = ()

    def allows(self, action: str) -> bool:
        """Whether this role grants the control-plane ``action``."""
        return any(_matches(p, action) for p in self.actions) and not any(_matches(p, action) for p in self.not_actions)


@dataclass(frozen=True)
class Assignment:
    """One role assignment: a role at a scope (an ARM id), and the Bicep resource that declares it."""

    scope: str
    role: RoleDefinition
    declared_in: str
    assignable: tuple[str, ...] | None = None
    """With a condition (a constrained delegation): the role GUIDs it lets the holder assign, else None."""
    principal_types: tuple[str, ...] | None = None
    """With a condition naming them: the principal types it lets the holder assign roles to."""


@dataclass(frozen=True)
class Deployment:
    """The concrete names the Bicep's parameters and outputs take in one deployment.

    ``names`` maps a module parameter that names a resource (``vnetName``, ``daskSubnetName``, ...) to its
    value; ``flags`` the ``main.bicep`` parameters that switch modules on (``deployAzureML``, ...).
    """

    subscription_id: str
    control_resource_group: str
    experiment_resource_group: str
    names: dict[str, str] = field(default_factory=dict)
    flags: dict[str, bool] = field(default_factory=dict)
    module_names: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per module file, names that differ from ``names`` (two modules call two storage accounts
    ``storageAccountName``: the control plane's and the AzureML workspace's)."""

    def names_for(self, module: Path) -> dict[str, str]:
        return {**self.names, **self.module_names.get(module.name, {})}

    def group_id(self, group: str) -> str:
        return f"/subscriptions/{self.subscription_id}/resourceGroups/{group}"


@dataclass(frozen=True)
class Rbac:
    """The assignments one principal holds, and ARM's access check over them."""

    assignments: tuple[Assignment, ...]
    unknown_roles: tuple[str, ...] = ()
    others: tuple[str, ...] = ()
    """The Bicep resources (``module.bicep:symbol``) that assign roles to identities other than this one."""

    def allowed(self, action: str, scope: str) -> bool:
        """Whether ``action`` is allowed at ``scope`` (an ARM id) by an assignment at or above it."""
        return any(_covers(a.scope, scope) and a.role.allows(action) for a in self.assignments)

    def may_assign(self, action: str, scope: str, role_id: str, principal_type: str) -> bool:
        """Whether ``action`` (``roleAssignments/write`` or ``delete``) of role ``role_id`` is allowed at ``scope``:
        an assignment there or above whose role allows the action and whose condition, if any, names the role
        (and the principal type, when it names types)."""
        return any(
            _covers(a.scope, scope)
            and a.role.allows(action)
            and (a.assignable is None or role_id.lower() in a.assignable)
            and (a.principal_types is None or principal_type.lower() in a.principal_types)
            for a in self.assignments
        )

    def roles_at(self, scope: str) -> list[str]:
        """Names of the roles that apply at ``scope`` (for messages and tests)."""
        return [a.role.name for a in self.assignments if _covers(a.scope, scope)]

    def only(self, *role_names: str) -> Rbac:
        """The same principal holding only the named roles' assignments (a test's "this role alone")."""
        kept = tuple(a for a in self.assignments if a.role.name in role_names)
        return Rbac(kept, self.unknown_roles, self.others)


ASSIGN_IDENTITY = "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action"
"""What attaching a user-assigned identity to a resource (a VM, an AmlCompute) needs on that identity."""


def assigned_identities(body: dict[str, Any]) -> list[tuple[str, str]]:
    """The (action, identity id) pairs a PUT body's ``identity.userAssignedIdentities`` links."""
    identities = (body.get("identity") or {}).get("userAssignedIdentities") or {}
    return [(ASSIGN_IDENTITY, identity) for identity in identities]


def arm_refusal(
    rbac: Rbac, principal_id: str, action: str, scope: str, linked: Sequence[tuple[str, str]] = ()
) -> tuple[int, dict[str, str], Any] | None:
    """ARM's 403, in its words, when ``rbac`` does not allow ``action`` at ``scope`` (``AuthorizationFailed``) or
    one of the ``linked`` (action, scope) pairs the request names (``LinkedAuthorizationFailed``); else None."""
    client = f"The client '{principal_id}' with object id '{principal_id}'"
    if not rbac.allowed(action, scope):
        message = (
            f"{client} does not have authorization to perform action '{action}' over scope '{scope}' or the scope "
            "is invalid. If access was recently granted, please refresh your credentials."
        )
        return 403, {}, {"error": {"code": "AuthorizationFailed", "message": message}}
    for linked_action, linked_scope in linked:
        if not rbac.allowed(linked_action, linked_scope):
            message = (
                f"{client} has permission to perform action '{action}' on scope '{scope}'; however, it does not "
                f"have permission to perform action(s) '{linked_action}' on the linked scope(s) '{linked_scope}' "
                "(respectively) or the linked scope(s) are invalid."
            )
            return 403, {}, {"error": {"code": "LinkedAuthorizationFailed", "message": message}}
    return None


def _matches(pattern: str, action: str) -> bool:
    """Azure's wildcard: ``*`` is any run of characters, and a ``/*/`` segment may also be empty
    (Managed Identity Operator's ``userAssignedIdentities/*/assign/action`` grants ``.../assign/action``)."""
    regex = re.escape(pattern).replace("/\\*/", "/(?:.*/)?").replace("\\*", ".*")
    return re.fullmatch(regex, action, re.IGNORECASE) is not None


def _covers(assigned: str, scope: str) -> bool:
    """Whether a role assigned at ``assigned`` applies at ``scope``: the same scope or one below it."""
    above = [s for s in assigned.lower().strip("/").split("/") if s]
    below = [s for s in scope.lower().strip("/").split("/") if s]
    return below[: len(above)] == above


@cache
def builtin_roles() -> dict[str, RoleDefinition]:
    """The bundled built-in roles by GUID."""
    document = json.loads(BUILTIN_ROLES.read_text(encoding="utf-8"))
    return {guid: _definition(role["roleName"], role) for guid, role in document["roles"].items()}


def _definition(name: str, permissions: dict[str, Any]) -> RoleDefinition:
    return RoleDefinition(
        name=name,
        actions=tuple(permissions.get("actions") or ()),
        not_actions=tuple(permissions.get("notActions") or ()),
        data_actions=tuple(permissions.get("dataActions") or ()),
        not_data_actions=tuple(permissions.get("notDataActions") or ()),
    )


@cache
def _parse(path: Path) -> dict[str, Any]:
    import pycep

    return dict(pycep.BicepParser().parse(text=path.read_text(encoding="utf-8")))


@cache
def role_ids() -> dict[str, str]:
    """``roleIds`` of ``role-definitions.bicep``: key -> GUID."""
    text = (INFRA / "modules" / "role-definitions.bicep").read_text(encoding="utf-8")
    return dict(re.findall(r"^\s*(\w+):\s*'([0-9a-f-]{36})'", text, re.MULTILINE))


def _dotted(node: Any) -> str | None:
    """``a.b.c`` as that text, a bare name as itself, anything else None."""
    if isinstance(node, str):
        return node
    operator = node.get("operator") if isinstance(node, dict) else None
    if not operator or operator.get("type") != "property_accessor":
        return None
    operands = operator["operands"]
    inner = _dotted(operands["operand_2"])
    return None if inner is None else f"{operands['operand_1']}.{inner}"


def _accessor(node: Any) -> tuple[str, str] | None:
    """``a.b`` as ("a", "b") (``a.b.c`` as ("a", "b.c")), else None."""
    dotted = _dotted(node)
    if dotted is None or "." not in dotted:
        return None
    head, rest = dotted.split(".", 1)
    return head, rest


FUNCTION_APP_PRINCIPAL = "functionApp.outputs.principalId"
"""How ``main.bicep`` names the Function App's identity when it passes it to a roles module."""


def deployed_rbac(deployment: Deployment) -> Rbac:
    """The Function App's assignments in ``deployment``, read from the Bicep."""
    main = _parse(INFRA / "main.bicep")
    assignments: list[Assignment] = []
    unknown: list[str] = []
    others: list[str] = []
    for symbol, module in main["modules"].items():
        config = module["config"]
        condition = config.get("condition")
        if condition is not None:
            if not deployment.flags.get(str(condition), False):
                continue
            config = config["config"]
        scope = config.get("scope")
        group = deployment.control_resource_group
        if scope is not None:
            function = scope["function"]
            assert function["type"] == "resource_group", f"{symbol}: unsupported module scope {scope}"
            assert function["parameters"]["resource_group_name"] == "experimentRgName", scope
            group = deployment.experiment_resource_group
        path = INFRA / module["detail"]["path"]
        bound = {name: _dotted(value) for name, value in (config.get("params") or {}).items()}
        found, missing, elsewhere = _module_assignments(path, deployment, group, bound)
        assignments += found
        unknown += missing
        others += elsewhere
    return Rbac(tuple(assignments), tuple(dict.fromkeys(unknown)), tuple(others))


def _is_function_app(path: Path, symbol: str, principal: Any, bound: dict[str, str | None]) -> bool:
    """Whether an assignment's ``principalId`` is the Function App's: a module parameter bound to
    :data:`FUNCTION_APP_PRINCIPAL`. Another identity is ``<resource>.properties.principalId`` of the module, or a
    parameter bound to anything else; any other form is an error (read it before counting it)."""
    name = _dotted(principal)
    parameters = _parse(path).get("parameters") or {}
    if isinstance(principal, str) and principal in parameters:
        return bound.get(principal) == FUNCTION_APP_PRINCIPAL
    resources = _parse(path).get("resources") or {}
    if name is not None and name.endswith(".properties.principalId") and name.split(".")[0] in resources:
        return False
    raise AssertionError(f"{path.name}:{symbol}: a principalId this reader does not know: {principal!r}")


def _deployed(path: Path, symbol: str, condition: Any, bound: dict[str, str | None], flags: dict[str, bool]) -> bool:
    """A resource's ``if`` in a module: a module parameter (or its ``!``) that ``main.bicep`` binds to one of
    its own parameters, whose value :attr:`Deployment.flags` must give (an unknown condition is an error)."""
    negated = isinstance(condition, dict) and condition.get("operator", {}).get("type") == "not"
    name = condition["operator"]["operands"]["bool_value"] if negated else condition
    flag = bound.get(name) if isinstance(name, str) else None
    if flag is None or flag not in flags:
        raise AssertionError(f"{path.name}:{symbol}: Deployment.flags needs the value behind {condition!r}")
    return flags[flag] != negated


def _module_assignments(
    path: Path, deployment: Deployment, group: str, bound: dict[str, str | None]
) -> tuple[list[Assignment], list[str], list[str]]:
    resources: dict[str, Any] = _parse(path).get("resources") or {}
    group_id = deployment.group_id(group)
    found: list[Assignment] = []
    unknown: list[str] = []
    others: list[str] = []
    names = deployment.names_for(path)
    for symbol, resource in resources.items():
        if resource["type"] != "Microsoft.Authorization/roleAssignments":
            continue
        config = resource["config"]
        condition = config.get("condition")
        config = config["config"] if condition is not None else config
        if not _is_function_app(path, symbol, config["properties"]["principalId"], bound):
            others.append(f"{path.name}:{symbol}")  # another identity's, deployed or not
            continue
        if condition is not None and not _deployed(path, symbol, condition, bound, deployment.flags):
            continue
        scope_symbol = config.get("scope")
        scope = group_id if scope_symbol is None else _existing_id(resources, str(scope_symbol), names, group_id)
        definition = config["properties"]["roleDefinitionId"]
        role: RoleDefinition | None
        label: str
        if "function" in definition:
            key = _accessor(definition["function"]["parameters"]["resource_name_1"])
            assert key is not None and key[0] == "roleIds", f"{path.name}:{symbol}: role {definition}"
            guid = role_ids()[key[1]]
            role, label = builtin_roles().get(guid), f"{key[1]} ({guid})"
        else:
            reference = _accessor(definition)
            assert reference is not None and reference[1] == "id", f"{path.name}:{symbol}: role {definition}"
            role, label = _custom_role(resources[reference[0]]), reference[0]
        if role is None:
            unknown.append(label)
            continue
        assignable, types = _condition(path, config["properties"].get("condition"))
        found.append(Assignment(scope, role, f"{path.name}:{symbol}", assignable, types))
    return found, unknown, others


def _condition(path: Path, condition: Any) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """The role GUIDs (``GuidEquals {...}``) and principal types (``StringEqualsIgnoreCase {'...'}``) a
    role assignment's condition allows (its text, or a module variable holding it), else (None, None)."""
    if condition is None:
        return None, None
    text = str(condition)
    variables = _parse(path).get("variables") or {}
    if text in variables:
        text = str(variables[text]["value"])
    text = re.sub(r"\$\{roleIds\.(\w+)\}", lambda m: role_ids()[m.group(1)], text)
    guids = tuple(g.lower() for g in re.findall(r"GuidEquals\s*\{([0-9a-fA-F-]{36})\}", text))
    types = tuple(
        t.lower() for t in re.findall(r"PrincipalType\]\s*ForAnyOfAnyValues:StringEqualsIgnoreCase\s*\{\\?'(\w+)", text)
    )
    return guids, (types or None)


def _existing_id(resources: dict[str, Any], symbol: str, names: dict[str, str], group_id: str) -> str:
    """The ARM id of an ``existing`` resource of a module (parents first), its name given by ``names``."""
    resource = resources[symbol]
    assert resource.get("existing"), f"{symbol} is not an existing resource"
    config = resource["config"]
    name_param = str(config["name"])
    if name_param not in names:
        raise KeyError(f"Deployment.names needs {name_param!r} (the name of {resource['type']} {symbol})")
    name = names[name_param]
    kind = resource["type"].split("/")
    parent = config.get("parent")
    if parent is not None:
        return f"{_existing_id(resources, str(parent), names, group_id)}/{kind[-1]}/{name}"
    return f"{group_id}/providers/{'/'.join(kind)}/{name}"


def _custom_role(resource: dict[str, Any]) -> RoleDefinition:
    assert resource["type"] == "Microsoft.Authorization/roleDefinitions", resource["type"]
    properties = resource["config"]["properties"]
    [permissions] = properties["permissions"]
    return _definition(str(properties["roleName"]), permissions)


def function_app_rbac(
    subscription_id: str,
    experiment_resource_group: str,
    control_resource_group: str = "rg-control",
    control_vnet: str = "vnet-rhpo-standin",
    *,
    deploy_image_registry: bool = True,
    azureml: AzureMLNames | None = None,
) -> Rbac:
    """The Function App's role assignments as the Bicep declares them, in a deployment of these groups
    (the control plane's resources named as a test names them); with ``azureml``, a deployment with the
    AzureML workspace (``deployAzureML``) named so."""
    names = {
        "storageAccountName": "strhpostandin",
        "appInsightsName": "appi-rhpo-standin",
        "vnetName": control_vnet,
        "daskSubnetName": "dask",
        "vmIdentityName": "id-dask-rhpo-standin",
        "registryName": STANDIN_REGISTRY,
    }
    flags = {"deployImageRegistry": deploy_image_registry}  # main.bicep's default: true
    module_names: dict[str, dict[str, str]] = {}
    if azureml is not None:
        flags |= {"deployAzureML": True, "azureMLKeylessStorage": azureml.keyless_storage}
        module_names["roles-azureml.bicep"] = {
            "workspaceName": azureml.workspace,
            "storageAccountName": azureml.storage_account,
            "computeIdentityName": azureml.compute_identity,
        }
    deployment = Deployment(
        subscription_id, control_resource_group, experiment_resource_group, names, flags, module_names
    )
    return deployed_rbac(deployment)


@dataclass(frozen=True)
class AzureMLNames:
    """The AzureML resources of a deployment with ``deployAzureML`` (in the experiment resource group)."""

    workspace: str
    compute_identity: str
    storage_account: str = "stamlstandin"
    keyless_storage: bool = False
