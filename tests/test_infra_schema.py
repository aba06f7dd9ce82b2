"""Every resource in infra/ checked against the Azure SDK model of its type and API version.

No Bicep compiler or Azure account is reachable here, but the management SDKs ship the REST models of
each resource type (``tests/arm_schema.py``). Each template is parsed with pycep-parser; each resource's
body (less the deployment-level keys ``name``, ``parent``, ``scope``, ``dependsOn``) is walked against the
model of the API version it declares: property names and nesting, enum values and their casing, required
and read-only properties, literal types. Values computed at deployment (parameters, functions,
references, interpolations) are not known here; a variable holding a literal is substituted, and each
``cond ? a : b`` is checked both ways. A resource
type or API version that no installed SDK models is listed (a warning in the test output, and
:data:`NOT_MODELLED` must name it with the reason), never passed in silence.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests import arm_schema

pycep = pytest.importorskip("pycep", reason="pycep-parser is not installed (requirements-dev.txt)")

INFRA = Path(__file__).resolve().parents[1] / "infra"
DEPLOYMENT_KEYS = frozenset({"name", "parent", "scope", "dependsOn"})

NAMED_BY_NAME = frozenset({"Microsoft.Web/sites/config"})
"""Types whose body model depends on the resource's name (``authsettingsV2``, ``appsettings``, ...): checked
as ``type/name`` (:data:`tests.arm_schema.RESOURCE_MODELS`); one without a literal name is not modelled."""
NOT_MODELLED: dict[str, str] = {}
"""``type@api-version`` -> why no SDK model covers it. Empty: every resource in infra/ is checked."""


@dataclass(frozen=True)
class Resource:
    file: str
    symbol: str
    type: str
    api_version: str
    existing: bool
    body: dict[str, Any]
    symbols: frozenset[str]

    @property
    def where(self) -> str:
        return f"{self.file}: {self.symbol} ({self.type}@{self.api_version})"


def _unwrap(config: Any) -> Any:
    """The object inside ``if (...) {...}`` and ``[for ...: {...}]``."""
    while isinstance(config, dict) and "config" in config and ({"condition", "loop_type"} & set(config)):
        config = config["config"]
    return config


def _loop_items(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        detail = node.get("loop_type", {}).get("detail", {}) if isinstance(node.get("loop_type"), dict) else {}
        for key in ("item_name", "index_name"):
            if isinstance(detail.get(key), str):
                yield detail[key]
        for value in node.values():
            yield from _loop_items(value)
    elif isinstance(node, list):
        for value in node:
            yield from _loop_items(value)


def _substitute(node: Any, variables: dict[str, Any], depth: int = 0) -> Any:
    """``node`` with references to variables that hold literals replaced by their value; loops inside
    properties (``[for x in y: {...}]``) become a one-item array of their body."""
    if isinstance(node, str) and node in variables and depth < 5:
        return _substitute(variables[node], variables, depth + 1)
    if isinstance(node, dict):
        if "loop_type" in node and "config" in node:
            return [_substitute(node["config"], variables, depth)]
        return {key: _substitute(value, variables, depth) for key, value in node.items()}
    if isinstance(node, list):
        return [_substitute(value, variables, depth) for value in node]
    return node


@cache
def resources() -> tuple[Resource, ...]:
    found = []
    for path in sorted(INFRA.rglob("*.bicep")):
        tree = pycep.BicepParser().parse(text=path.read_text(encoding="utf-8"))
        variables = {name: entry["value"] for name, entry in (tree.get("variables") or {}).items()}
        symbols = {
            *(tree.get("parameters") or {}),
            *(tree.get("resources") or {}),
            *(tree.get("modules") or {}),
            *(tree.get("imports") or {}),
            *variables,
            *_loop_items(tree.get("resources") or {}),
        }
        for symbol, decl in (tree.get("resources") or {}).items():
            body = _substitute(_unwrap(decl["config"]), variables)
            resource_type = decl["type"]
            if resource_type in NAMED_BY_NAME and isinstance(body.get("name"), str):
                resource_type = f"{resource_type}/{body['name']}"
            found.append(
                Resource(
                    file=path.relative_to(INFRA).as_posix(),
                    symbol=symbol,
                    type=resource_type,
                    api_version=decl["api_version"],
                    existing=bool(decl["existing"]),
                    body=body,
                    symbols=frozenset(symbols),
                )
            )
    return tuple(found)


def computed_in(resource: Resource):
    """The predicate for values only known at deployment, in ``resource``'s file."""

    def computed(value: Any) -> bool:
        if value is None:  # `null`: the property is left out
            return True
        if isinstance(value, str):
            return value in resource.symbols or "${" in value
        return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in {"operator", "function"}

    return computed


def modelled(resource: Resource) -> bool:
    return (
        resource.type in arm_schema.RESOURCE_MODELS
        and arm_schema.sdk_api_version(resource.type) == resource.api_version
    )


def _branch(node: Any, side: str) -> Any:
    """``node`` with each ``cond ? a : b`` replaced by one side (``true_value`` or ``false_value``)."""
    if isinstance(node, dict):
        operator = node.get("operator") if len(node) == 1 else None
        if isinstance(operator, dict) and operator.get("type") == "conditional":
            return _branch(operator["operands"][side], side)
        return {key: _branch(value, side) for key, value in node.items()}
    if isinstance(node, list):
        return [_branch(value, side) for value in node]
    return node


def problems_of(resource: Resource) -> list[str]:
    """Problems of the resource's body, once with every condition true and once with every one false."""
    body = {key: value for key, value in resource.body.items() if key not in DEPLOYMENT_KEYS}
    found: list[str] = []
    for side in ("true_value", "false_value"):
        for problem in arm_schema.check(
            _branch(body, side),
            arm_schema.model_for(resource.type),
            computed=computed_in(resource),
            skip_required=frozenset({"name"}),
        ):
            if f"{resource.where}: {problem}" not in found:
                found.append(f"{resource.where}: {problem}")
    return found


# ---------------------------------------------------------------------------------------------------


def test_infra_has_resources_of_many_types() -> None:
    found = resources()
    assert len(found) >= 20
    assert len({r.type for r in found}) >= 15


def test_resources_no_sdk_models_are_listed_not_passed() -> None:
    """Types/API versions without an SDK model are reported here, and must be acknowledged."""
    missing = sorted({f"{r.type}@{r.api_version}" for r in resources() if not modelled(r)})
    for entry in missing:
        sdk = (
            arm_schema.sdk_api_version(entry.split("@")[0])
            if entry.split("@")[0] in arm_schema.RESOURCE_MODELS
            else None
        )
        warnings.warn(
            f"not checked against an SDK model: {entry}" + (f" (the installed SDK models {sdk})" if sdk else ""),
            stacklevel=1,
        )
    assert missing == sorted(NOT_MODELLED), f"resources no SDK model covers (add a model or list why): {missing}"


@pytest.mark.parametrize("resource", [r for r in resources() if not r.existing], ids=lambda r: f"{r.file}:{r.symbol}")
def test_resource_matches_its_sdk_model(resource: Resource) -> None:
    if not modelled(resource):
        pytest.skip(f"listed in NOT_MODELLED: {NOT_MODELLED.get(f'{resource.type}@{resource.api_version}')}")
    assert problems_of(resource) == []


def test_existing_references_use_modelled_api_versions() -> None:
    """``existing`` resources carry no body, but their API version decides the properties read from them."""
    for resource in resources():
        if resource.existing:
            assert modelled(resource) or f"{resource.type}@{resource.api_version}" in NOT_MODELLED, resource.where


# ---------------------------------------------------------------------------------------------------
# The checker catches what it claims to (on bodies of the shapes infra/ uses)
# ---------------------------------------------------------------------------------------------------

STORAGE = "Microsoft.Storage/storageAccounts"
GOOD_STORAGE = {
    "location": "westeurope",
    "kind": "StorageV2",
    "sku": {"name": "Standard_LRS"},
    "properties": {"minimumTlsVersion": "TLS1_2", "networkAcls": {"defaultAction": "Allow"}},
}


def _problems(body: dict[str, Any], resource_type: str = STORAGE) -> list[str]:
    return [str(p) for p in arm_schema.check(body, arm_schema.model_for(resource_type))]


def test_a_good_body_has_no_problems() -> None:
    assert _problems(GOOD_STORAGE) == []


def test_an_unknown_or_misplaced_property_fails_with_its_path() -> None:
    misplaced = {**GOOD_STORAGE, "minimumTlsVersion": "TLS1_2"}
    assert _problems(misplaced) == ["minimumTlsVersion: unknown property of StorageAccountCreateParameters"]
    misspelt = {**GOOD_STORAGE, "properties": {"minimumTLSVersion": "TLS1_2"}}
    (problem,) = _problems(misspelt)
    assert problem.startswith("properties.minimumTLSVersion: unknown property")
    assert "'minimumTlsVersion'" in problem


def test_a_wrong_enum_casing_fails() -> None:
    body = {**GOOD_STORAGE, "properties": {"minimumTlsVersion": "tls1_2"}}
    assert _problems(body) == ["properties.minimumTlsVersion: wrong casing: 'tls1_2' is 'TLS1_2' in MinimumTlsVersion"]
    (problem,) = _problems({**GOOD_STORAGE, "kind": "StorageV3"})
    assert problem.startswith("kind: 'StorageV3' is not one of Kind")


def test_a_missing_required_property_fails() -> None:
    body = {key: value for key, value in GOOD_STORAGE.items() if key != "sku"}
    assert _problems(body) == ["sku: missing required property of StorageAccountCreateParameters"]
    nested = {**GOOD_STORAGE, "properties": {"networkAcls": {"bypass": "AzureServices"}}}
    assert _problems(nested) == ["properties.networkAcls.defaultAction: missing required property of NetworkRuleSet"]


def test_flattened_msrest_models_are_checked_too() -> None:
    """The older SDKs (roleAssignments 2022-04-01) flatten ``properties.x``; the checker rebuilds the
    nesting, so a property outside ``properties`` is unknown and a missing principal is reported."""
    role = "Microsoft.Authorization/roleAssignments"
    good = {"properties": {"roleDefinitionId": "x", "principalId": "y", "principalType": "ServicePrincipal"}}
    assert _problems(good, role) == []
    assert _problems({"properties": {"roleDefinitionId": "x", "principalType": "servicePrincipal"}}, role) == [
        "properties.principalType: wrong casing: 'servicePrincipal' is 'ServicePrincipal' in PrincipalType",
        "properties.principalId: missing required property of RoleAssignmentCreateParameters.properties",
    ]
    assert _problems({**good, "principalId": "y"}, role) == [
        "principalId: unknown property of RoleAssignmentCreateParameters"
    ]


def test_read_only_properties_and_literal_types_fail() -> None:
    body = {**GOOD_STORAGE, "properties": {"provisioningState": "Succeeded", "supportsHttpsTrafficOnly": "yes"}}
    assert _problems(body) == [
        "properties.provisioningState: unknown property of StorageAccountPropertiesCreateParameters",
        "properties.supportsHttpsTrafficOnly: expected bool, got str 'yes'",
    ]
    site = {"location": "x", "properties": {"state": "Running"}}
    assert _problems(site, "Microsoft.Web/sites") == ["properties.state: read-only property of SiteProperties"]


def test_every_modelled_type_names_a_model_and_an_api_version() -> None:
    for resource_type in arm_schema.RESOURCE_MODELS:
        model = arm_schema.model_for(resource_type)
        assert arm_schema.schema(model).props, resource_type
        version = arm_schema.sdk_api_version(resource_type)
        assert len(version) >= 10 and version[:4].isdigit(), (resource_type, version)


def test_the_checker_sees_the_real_templates_nesting() -> None:
    """Mutations of real infra/ resources are caught at their path (the walk reaches that deep)."""
    (dask,) = [r for r in resources() if r.symbol == "daskNsg"]
    rule = dask.body["properties"]["securityRules"][0]["properties"]
    broken = dict(rule, access="allow", destinationPortRange=rule["destinationPortRanges"])
    del broken["direction"]
    body = {**dask.body, "properties": {"securityRules": [{"name": "r", "properties": broken}]}}
    mutated = Resource(dask.file, dask.symbol, dask.type, dask.api_version, False, body, dask.symbols)
    assert sorted(p.split(": ", 2)[2] for p in problems_of(mutated)) == sorted(
        [
            "properties.securityRules[0].properties.access: wrong casing: 'allow' is 'Allow' in SecurityRuleAccess",
            "properties.securityRules[0].properties.destinationPortRange: expected str, got list ['8786', '8787']",
            "properties.securityRules[0].properties.direction: missing required property of "
            "SecurityRulePropertiesFormat",
        ]
    )
    (site,) = [r for r in resources() if r.symbol == "site"]
    config = site.body["properties"]["functionAppConfig"]
    body = {**site.body, "properties": {**site.body["properties"], "functionAppConfig": {**config, "Runtime": {}}}}
    mutated = Resource(site.file, site.symbol, site.type, site.api_version, False, body, site.symbols)
    assert [p.split(": ", 2)[2] for p in problems_of(mutated)] == [
        "properties.functionAppConfig.Runtime: unknown property of FunctionAppConfig (the model spells it 'runtime')"
    ]


def test_the_local_arm_server_checks_bodies_against_the_same_models() -> None:
    """tests/arm_server.py answers 400 for a body its SDK model refuses, and takes what the SDK sends."""
    import json
    import urllib.request

    from azure.mgmt.network import NetworkManagementClient
    from azure.mgmt.network.models import NetworkSecurityGroup, SecurityRule

    from tests.arm_server import FakeArm, StaticTokenCredential

    with FakeArm() as arm:
        path = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/n"
        bad = {"location": "x", "properties": {"securityRules": [{"name": "r", "properties": {"access": "allow"}}]}}
        request = urllib.request.Request(
            f"{arm.base_url}{path}?api-version=2026-03-01",
            data=json.dumps(bad).encode(),
            method="PUT",
            headers={"Authorization": f"Bearer {arm.token}", "Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        error = json.loads(refused.value.read())["error"]
        assert refused.value.code == 400 and error["code"] == "InvalidRequestContent"
        assert "properties.securityRules[0].properties.access: wrong casing" in error["message"]
        assert "properties.securityRules[0].properties.direction: missing required property" in error["message"]

        client = NetworkManagementClient(StaticTokenCredential(arm.token), "s", base_url=arm.base_url)
        rule = SecurityRule(name="r", protocol="Tcp", access="Allow", direction="Inbound", priority=100)
        created = client.network_security_groups.begin_create_or_update(
            "rg",
            "n",
            NetworkSecurityGroup(location="x", security_rules=[rule]),
            enforce_https=False,
            polling_interval=0,
        ).result()
        assert created.security_rules[0].access == "Allow"


def test_both_sides_of_a_condition_are_checked() -> None:
    (workspace,) = [r for r in resources() if r.symbol == "workspace" and not r.existing]
    mode = workspace.body["properties"]["systemDatastoresAuthMode"]
    assert mode["operator"]["type"] == "conditional"  # keylessStorage ? 'Identity' : 'AccessKey'
    broken = {**mode, "operator": {**mode["operator"], "operands": {**mode["operator"]["operands"]}}}
    broken["operator"]["operands"]["false_value"] = "accessKey"
    body = {**workspace.body, "properties": {**workspace.body["properties"], "systemDatastoresAuthMode": broken}}
    mutated = Resource(
        workspace.file, workspace.symbol, workspace.type, workspace.api_version, False, body, workspace.symbols
    )
    assert [p.split(": ", 2)[2] for p in problems_of(mutated)] == [
        "properties.systemDatastoresAuthMode: wrong casing: 'accessKey' is 'AccessKey' in SystemDatastoresAuthMode"
    ]


def test_an_unmodelled_type_or_api_version_is_not_passed() -> None:
    """What NOT_MODELLED must list: a type no SDK models, or a modelled type at another API version."""
    (site,) = [r for r in resources() if r.symbol == "site"]
    assert modelled(site)
    older = Resource(site.file, site.symbol, site.type, "2024-04-01", False, site.body, site.symbols)
    unknown = Resource(site.file, "x", "Microsoft.Contoso/widgets", "2025-01-01", False, {}, site.symbols)
    assert not modelled(older) and not modelled(unknown)
