"""Request bodies checked against the Azure management SDKs' own models: names, nesting, enums, required.

Every resource type we deploy (Bicep) or create (the backends, through the local ARM server) has a model
in an Azure SDK: its REST property names, each property's type, which enum values it knows, which
properties are required and which are read-only. :func:`check` walks a JSON body against one of them:

* an unknown property (or one at the wrong level) -> ``unknown property``;
* an enum value the SDK does not list -> ``not one of``, with ``wrong casing`` when only the case differs
  (the SDKs compare case-insensitively; ARM does for many types, not all, and Bicep warns);
* a required property that is missing -> ``missing required property``;
* a read-only property that is set -> ``read-only property``;
* a literal of the wrong JSON type -> ``expected ...``.

Two generations of SDK are read: the current ones (``_attr_to_rest_field``, filled when a model is first
instantiated, type hints on the class) and the older msrest ones (``_attribute_map`` with flattened
``properties.x`` keys, ``_validation``, enums in the ``__init__`` hints). :data:`RESOURCE_MODELS` names the
model of each resource type, and :func:`sdk_api_version` reads the API version the SDK itself sends for that
type's PUT, so a table entry cannot claim a version its SDK does not model.

Values a template computes (parameters, functions, references, interpolations) are not known before
deployment: :func:`check` is given a predicate for those and skips their value, never their key.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cache
from typing import Any, Literal, Union

_SDKS = {  # package -> (models module, operations module holding the request builders)
    "web": ("azure.mgmt.web.models", "azure.mgmt.web.operations._operations"),
    "storage": ("azure.mgmt.storage.models", "azure.mgmt.storage.operations._operations"),
    "network": ("azure.mgmt.network.models", "azure.mgmt.network.operations._operations"),
    "compute": ("azure.mgmt.compute.models", "azure.mgmt.compute.operations._operations"),
    "authorization": (
        "azure.mgmt.authorization.v2022_04_01.models",
        "azure.mgmt.authorization.v2022_04_01.operations._role_assignments_operations",
    ),
    "authorization-definitions": (
        "azure.mgmt.authorization.v2022_04_01.models",
        "azure.mgmt.authorization.v2022_04_01.operations._role_definitions_operations",
    ),
    "msi": (
        "azure.mgmt.msi.v2024_11_30.models",
        "azure.mgmt.msi.v2024_11_30.operations._user_assigned_identities_operations",
    ),
    "applicationinsights": (
        "azure.mgmt.applicationinsights.v2020_02_02.models",
        "azure.mgmt.applicationinsights.v2020_02_02.operations._components_operations",
    ),
    "loganalytics": ("azure.mgmt.loganalytics.models", "azure.mgmt.loganalytics.operations._operations"),
    "keyvault": ("azure.mgmt.keyvault.models", "azure.mgmt.keyvault.operations._operations"),
    "containerregistry": ("azure.mgmt.containerregistry.models", "azure.mgmt.containerregistry.operations._operations"),
    "ml": (
        "azure.ai.ml._restclient.arm_ml_service.models",
        "azure.ai.ml._restclient.arm_ml_service.operations._operations",
    ),
    "eventgrid": ("azure.mgmt.eventgrid.models", "azure.mgmt.eventgrid.operations._topics_operations"),
    "workbooks": (
        "azure.mgmt.applicationinsights.v2023_06_01.models",
        "azure.mgmt.applicationinsights.v2023_06_01.operations._workbooks_operations",
    ),
    "scheduledqueryrules": (
        "azure.mgmt.monitor.models",
        "azure.mgmt.monitor.operations._scheduled_query_rules_operations",
    ),
}
# resource type -> (SDK, model class of its PUT body, request builder of that PUT)
RESOURCE_MODELS: dict[str, tuple[str, str, str]] = {
    "Microsoft.Insights/workbooks": ("workbooks", "Workbook", "build_create_or_update_request"),
    "Microsoft.Insights/scheduledQueryRules": (
        "scheduledqueryrules",
        "ScheduledQueryRuleResource",
        "build_create_or_update_request",
    ),
    "Microsoft.Web/serverfarms": ("web", "AppServicePlan", "build_app_service_plans_create_or_update_request"),
    "Microsoft.Web/sites": ("web", "Site", "build_web_apps_create_or_update_request"),
    # A site's config resources are singletons whose body depends on their name: keyed "type/name".
    "Microsoft.Web/sites/config/authsettingsV2": (
        "web",
        "SiteAuthSettingsV2",
        "build_web_apps_update_auth_settings_v2_request",
    ),
    "Microsoft.Storage/storageAccounts": (
        "storage",
        "StorageAccountCreateParameters",
        "build_storage_accounts_create_request",
    ),
    "Microsoft.Storage/storageAccounts/blobServices": (
        "storage",
        "BlobServiceProperties",
        "build_blob_services_set_service_properties_request",
    ),
    "Microsoft.Storage/storageAccounts/blobServices/containers": (
        "storage",
        "BlobContainer",
        "build_blob_containers_create_request",
    ),
    "Microsoft.Storage/storageAccounts/queueServices": (
        "storage",
        "QueueServiceProperties",
        "build_queue_services_set_service_properties_request",
    ),
    "Microsoft.Storage/storageAccounts/queueServices/queues": ("storage", "StorageQueue", "build_queue_create_request"),
    "Microsoft.Storage/storageAccounts/tableServices": (
        "storage",
        "TableServiceProperties",
        "build_table_services_set_service_properties_request",
    ),
    "Microsoft.Storage/storageAccounts/tableServices/tables": ("storage", "Table", "build_table_create_request"),
    "Microsoft.Network/publicIPAddresses": (
        "network",
        "PublicIPAddress",
        "build_public_ip_addresses_create_or_update_request",
    ),
    "Microsoft.Network/natGateways": ("network", "NatGateway", "build_nat_gateways_create_or_update_request"),
    "Microsoft.Network/networkSecurityGroups": (
        "network",
        "NetworkSecurityGroup",
        "build_network_security_groups_create_or_update_request",
    ),
    "Microsoft.Network/virtualNetworks": (
        "network",
        "VirtualNetwork",
        "build_virtual_networks_create_or_update_request",
    ),
    "Microsoft.Network/virtualNetworks/subnets": ("network", "Subnet", "build_subnets_create_or_update_request"),
    "Microsoft.Network/networkInterfaces": (
        "network",
        "NetworkInterface",
        "build_network_interfaces_create_or_update_request",
    ),
    "Microsoft.Compute/virtualMachines": (
        "compute",
        "VirtualMachine",
        "build_virtual_machines_create_or_update_request",
    ),
    "Microsoft.Compute/disks": ("compute", "Disk", "build_disks_create_or_update_request"),
    "Microsoft.Authorization/roleAssignments": (
        "authorization",
        "RoleAssignmentCreateParameters",
        "build_create_request",
    ),
    "Microsoft.Authorization/roleDefinitions": (
        "authorization-definitions",
        "RoleDefinition",
        "build_create_or_update_request",
    ),
    "Microsoft.ManagedIdentity/userAssignedIdentities": ("msi", "Identity", "build_create_or_update_request"),
    "Microsoft.Insights/components": (
        "applicationinsights",
        "ApplicationInsightsComponent",
        "build_create_or_update_request",
    ),
    "Microsoft.OperationalInsights/workspaces": (
        "loganalytics",
        "Workspace",
        "build_workspaces_create_or_update_request",
    ),
    "Microsoft.KeyVault/vaults": ("keyvault", "VaultCreateOrUpdateParameters", "build_vaults_create_or_update_request"),
    "Microsoft.ContainerRegistry/registries": ("containerregistry", "Registry", "build_registries_create_request"),
    "Microsoft.MachineLearningServices/workspaces": ("ml", "Workspace", "build_workspaces_create_or_update_request"),
    "Microsoft.EventGrid/topics": ("eventgrid", "Topic", "build_create_or_update_request"),
}
"""The ML workspace's model is the one azure-ai-ml ships (azure-mgmt-machinelearningservices stops at
2020-08-01)."""

OPEN_ENUMS = frozenset({"VirtualMachineSizeTypes"})
"""Enums the SDK models but ARM does not close: the compute SDK says its VM size list "is not exhaustive"
(ARM takes any size the region offers, e.g. Standard_NC8as_T4_v3, which the enum lacks)."""


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


# ------------------------------------------------------------------------------------ types
@dataclass(frozen=True)
class Prim:
    """A JSON scalar: ``str`` (also dates, durations), ``int``, ``float``, ``bool``, or ``any``."""

    kind: str


@dataclass(frozen=True)
class Enum:
    name: str
    values: tuple[str, ...]
    integers: bool = False
    """An int enum (``AlertSeverity``): its wire values are JSON numbers, never strings."""


def _enum_of(kind: type[enum.Enum]) -> Enum:
    return Enum(kind.__name__, tuple(str(e.value) for e in kind), integers=issubclass(kind, int))


@dataclass(frozen=True)
class ListOf:
    item: Any


@dataclass(frozen=True)
class DictOf:
    value: Any


@dataclass(frozen=True)
class Ref:
    """A model class, resolved to an :class:`Obj` on use (models refer to themselves)."""

    model: type


@dataclass
class Prop:
    type: Any
    required: bool = False
    readonly: bool = False


@dataclass
class Obj:
    name: str
    props: dict[str, Prop] = field(default_factory=dict)
    discriminator: str | None = None
    subtypes: dict[str, type] = field(default_factory=dict)


ANY = Prim("any")
_PRIMS = {str: "str", int: "int", float: "float", bool: "bool", bytes: "str", datetime: "str", date: "str"}
_PRIMS[timedelta] = "str"
_MSREST_PRIMS = {"str": "str", "int": "int", "long": "int", "float": "float", "bool": "bool"}


def _namespace(model: type) -> dict[str, Any]:
    """Globals to resolve a model's type hints: its module's, plus ``_models`` (the models package)."""
    ns = dict(vars(sys.modules[model.__module__]))
    package = re.sub(r"\.(_models|_models_py3)$", "", model.__module__)
    ns.setdefault("_models", importlib.import_module(package))
    return ns


def _is_hybrid(tp: Any) -> bool:
    """A current-generation model (``azure.*._utils.model_base.Model``)."""
    return isinstance(tp, type) and any(base.__module__.endswith(".model_base") for base in tp.__mro__[1:])


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and (hasattr(tp, "_attribute_map") or _is_hybrid(tp))


def _from_hint(tp: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        enums = [a for a in present if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums:
            return _enum_of(enums[0])
        return _from_hint(present[0]) if len(present) == 1 else ANY
    if origin is Literal:
        return Enum("literal", tuple(str(a.value if isinstance(a, enum.Enum) else a) for a in args))
    if origin in (list, typing.List):  # noqa: UP006
        return ListOf(_from_hint(args[0]) if args else ANY)
    if origin in (dict, typing.Dict):  # noqa: UP006
        return DictOf(_from_hint(args[1]) if len(args) == 2 else ANY)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_of(tp)
    if _is_model(tp):
        return Ref(tp)
    return Prim(_PRIMS.get(tp, "any")) if isinstance(tp, type) else ANY


def _hints(fn: Any, ns: dict[str, Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, globalns=ns, localns=ns)
    except Exception:  # an unresolvable hint leaves its fields typed ANY (their keys are still checked)
        return {}


def _from_msrest(kind: str, hint: Any, models: Any) -> Any:
    if kind.startswith("[") and kind.endswith("]"):
        return ListOf(_from_msrest(kind[1:-1], typing.get_args(hint)[0] if typing.get_args(hint) else None, models))
    if kind.startswith("{") and kind.endswith("}"):
        return DictOf(_from_msrest(kind[1:-1], None, models))
    if kind in _MSREST_PRIMS:
        found = _from_hint(hint) if hint is not None else None
        return found if isinstance(found, Enum) else Prim(_MSREST_PRIMS[kind])
    model = getattr(models, kind, None)
    if _is_model(model):
        return Ref(model)
    return ANY if kind == "object" else Prim("str")  # iso-8601, duration, date, base64, ...


@cache
def schema(model: type) -> Obj:
    """The :class:`Obj` of an SDK model class (either generation)."""
    ns = _namespace(model)
    obj = Obj(model.__name__)
    if _is_hybrid(model):
        model()  # fills _attr_to_rest_field
        hints = _hints(model, ns)
        for py, rest in model._attr_to_rest_field.items():
            visibility = set(rest._visibility or ("create",))
            hint = hints.get(py)
            optional = getattr(rest, "_is_optional", None)  # older model_base: Optional[...] in the hint
            if optional is None:
                optional = hint is None or type(None) in typing.get_args(hint)
            tp = _from_hint(hint) if hint is not None else ANY
            obj.props[rest._rest_name] = Prop(tp, not optional, not visibility & {"create", "update"})
            if rest._is_discriminator:
                obj.discriminator = rest._rest_name
        obj.subtypes = dict(getattr(model, "__mapping__", None) or {})
        return obj
    models = ns["_models"]
    hints = _hints(model.__init__, ns)
    validation = getattr(model, "_validation", {}) or {}
    for py, entry in model._attribute_map.items():
        path = [part.replace("\\.", ".") for part in re.split(r"(?<!\\)\.", entry["key"])]
        rules = validation.get(py, {})
        prop = Prop(
            _from_msrest(entry["type"], hints.get(py), models), bool(rules.get("required")), bool(rules.get("readonly"))
        )
        node = obj
        for part in path[:-1]:  # a flattened "properties.x" key: an implicit nested object
            holder = node.props.setdefault(part, Prop(Obj(f"{node.name}.{part}"), readonly=True))
            holder.required |= prop.required
            holder.readonly &= prop.readonly
            node = holder.type
        node.props[path[-1]] = prop
    for key, mapping in (getattr(model, "_subtype_map", None) or {}).items():
        obj.discriminator = model._attribute_map[key]["key"]
        obj.subtypes = {value: getattr(models, name) for value, name in mapping.items()}
    return obj


# ------------------------------------------------------------------------------------ checking
def _never(_: Any) -> bool:
    return False


def check(
    body: Any,
    tp: Any,
    path: str = "",
    *,
    computed: Callable[[Any], bool] = _never,
    skip_required: frozenset[str] = frozenset(),
    allow_readonly: bool = False,
    enum_casing: bool = True,
) -> list[Problem]:
    """Problems of ``body`` against type ``tp`` (a model class or a type of this module).

    ``computed(value)`` says a value is only known at deployment (its contents are not checked);
    ``skip_required`` names top-level properties given elsewhere (a Bicep resource's ``name``);
    ``allow_readonly`` accepts read-only properties (a resource as the server returns it);
    ``enum_casing=False`` accepts an enum value in any case (a service that parses them so).
    """
    problems: list[Problem] = []
    walker = _Walker(computed, allow_readonly, enum_casing, problems)
    walker.walk(body, Ref(tp) if isinstance(tp, type) else tp, path, skip_required)
    return problems


@dataclass
class _Walker:
    computed: Callable[[Any], bool]
    allow_readonly: bool
    enum_casing: bool
    out: list[Problem]

    def walk(self, value: Any, tp: Any, path: str, skip: frozenset[str] = frozenset()) -> None:
        if self.computed(value):
            return
        if isinstance(tp, Ref):
            obj = schema(tp.model)
            if isinstance(value, Mapping) and obj.discriminator and value.get(obj.discriminator) in obj.subtypes:
                obj = schema(obj.subtypes[value[obj.discriminator]])
            tp = obj
        if isinstance(tp, Obj):
            self._object(value, tp, path, skip)
        elif isinstance(tp, ListOf | DictOf):
            is_list = isinstance(tp, ListOf)
            if not isinstance(value, list if is_list else Mapping):
                kind = "an array" if is_list else "an object (a map)"
                self.out.append(Problem(path, f"expected {kind}, got {type(value).__name__}"))
                return
            items = enumerate(value) if is_list else value.items()
            for key, item in items:
                where = f"{path}[{key}]" if is_list else f"{path}.{key}"
                self.walk(item, tp.item if isinstance(tp, ListOf) else tp.value, where)
        elif isinstance(tp, Enum):
            self._enum(value, tp, path)
        elif isinstance(tp, Prim) and tp.kind != "any":
            ok = {
                "str": isinstance(value, str),
                "bool": isinstance(value, bool),
                "int": isinstance(value, int) and not isinstance(value, bool),
                "float": isinstance(value, int | float) and not isinstance(value, bool),
            }[tp.kind]
            if not ok:
                self.out.append(Problem(path, f"expected {tp.kind}, got {type(value).__name__} {value!r}"))

    def _object(self, value: Any, tp: Obj, path: str, skip: frozenset[str]) -> None:
        if not isinstance(value, Mapping):
            self.out.append(Problem(path or "/", f"expected an object ({tp.name}), got {type(value).__name__}"))
            return
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            prop = tp.props.get(key)
            if prop is None:
                near = [k for k in tp.props if k.lower() == str(key).lower()]
                hint = f" (the model spells it {near[0]!r})" if near else ""
                self.out.append(Problem(where, f"unknown property of {tp.name}{hint}"))
            elif prop.readonly and not self.allow_readonly:
                self.out.append(Problem(where, f"read-only property of {tp.name}"))
            else:
                self.walk(item, prop.type, where)
        for key, prop in tp.props.items():
            if prop.required and not prop.readonly and key not in value and key not in skip:
                where = f"{path}.{key}" if path else key
                self.out.append(Problem(where, f"missing required property of {tp.name}"))

    def _enum(self, value: Any, tp: Enum, path: str) -> None:
        if tp.integers:
            if not (isinstance(value, int) and not isinstance(value, bool) and str(value) in tp.values):
                self.out.append(Problem(path, f"{value!r} is not one of {tp.name} {list(tp.values)} (numbers)"))
            return
        if value in tp.values or (tp.name in OPEN_ENUMS and isinstance(value, str)):
            return
        near = [v for v in tp.values if str(v).lower() == str(value).lower()]
        if near and not self.enum_casing:
            return
        if near:
            self.out.append(Problem(path, f"wrong casing: {value!r} is {near[0]!r} in {tp.name}"))
        else:
            self.out.append(Problem(path, f"{value!r} is not one of {tp.name} {list(tp.values)}"))


def model_for(resource_type: str) -> type:
    """The SDK model class of a resource type's PUT body."""
    sdk, name, _ = RESOURCE_MODELS[resource_type]
    return getattr(importlib.import_module(_SDKS[sdk][0]), name)


def sdk_api_version(resource_type: str) -> str:
    """The API version the SDK sends when it creates a resource of this type (read from its source)."""
    sdk, _, builder = RESOURCE_MODELS[resource_type]
    module = _SDKS[sdk][1]
    source = inspect.getsource(getattr(importlib.import_module(module), builder))
    versions = set(re.findall(r'"api-version", "([^"]+)"', source))
    assert len(versions) == 1, f"{module}.{builder}: API versions {versions}"
    return versions.pop()
