"""RBAC as the local ARM server enforces it (tests/rbac.py): the Function App's roles, read from the Bicep,
against the real management SDKs. What Azure would answer 403, the stand-in answers 403."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.backends.arm import RetrySettings, make_arm_client
from shared.backends.vmcluster.network import make_network_client
from shared.errors import BackendError
from tests.arm_server import FakeArm, StaticTokenCredential
from tests.rbac import (
    FUNCTION_APP_PRINCIPAL,
    INFRA,
    Assignment,
    Rbac,
    _covers,
    _deployed,
    _is_function_app,
    builtin_roles,
)
from tests.test_vmcluster_standin import CONTROL_RG, CONTROL_VNET, LOC, RG, SUB, function_app_roles

VM_CONTRIBUTOR = "9980e02c-c2be-4d73-94e8-173b1dc7cf3c"
GROUP = f"/subscriptions/{SUB}/resourceGroups/{RG}"
WORKSPACE_STORAGE = f"{GROUP}/providers/Microsoft.Storage/storageAccounts/stmlrhpostandin"
CONTROL_NET = f"/subscriptions/{SUB}/resourceGroups/{CONTROL_RG}/providers/Microsoft.Network"
NO_RETRY = RetrySettings(attempts=1, initial_wait_s=0, max_wait_s=0, jitter_s=0, sleep=lambda _: None)


@pytest.fixture
def arm() -> Iterator[FakeArm]:
    with FakeArm(rbac=function_app_roles()) as server:
        server.seed(WORKSPACE_STORAGE, {"location": LOC, "kind": "StorageV2", "sku": {"name": "Standard_LRS"}})
        subnet = {"name": "dask", "properties": {"addressPrefix": "10.50.1.0/24"}}
        server.seed(
            f"{CONTROL_NET}/virtualNetworks/{CONTROL_VNET}", {"location": LOC, "properties": {"subnets": [subnet]}}
        )
        yield server


def _list_keys(arm: FakeArm) -> Any:
    from azure.mgmt.storage import StorageManagementClient

    client = make_arm_client(StorageManagementClient, SUB, StaticTokenCredential(arm.token), arm.base_url)
    return client.storage_accounts.list_keys(RG, WORKSPACE_STORAGE.rsplit("/", 1)[1])


def test_the_function_app_cannot_list_the_workspace_storage_keys(arm: FakeArm) -> None:
    """Virtual Machine Contributor holds ``storageAccounts/listKeys/action``: at the experiment group's scope
    it would give the Function App the AzureML workspace storage's keys. The Bicep gives a custom role there
    instead, and Virtual Machine Contributor only at the dask subnet's scope."""
    from azure.core.exceptions import HttpResponseError

    roles = function_app_roles()
    for rbac in (roles, roles.only("Virtual Machine Contributor")):
        arm.rbac = rbac
        with pytest.raises(HttpResponseError) as refused:
            _list_keys(arm)
        assert refused.value.status_code == 403 and refused.value.error is not None
        assert refused.value.error.code == "AuthorizationFailed"
        assert "'Microsoft.Storage/storageAccounts/listKeys/action'" in str(refused.value)

    # Why: the built-in role at the group's scope, which the Bicep used to assign, lists them.
    arm.rbac = Rbac((Assignment(GROUP, builtin_roles()[VM_CONTRIBUTOR], "the former roles-experiments.bicep"),))
    assert len(_list_keys(arm).as_dict()["keys"]) == 2


def test_roles_at_the_subnet_give_nothing_on_its_vnet(arm: FakeArm) -> None:
    """RBAC flows down only: Reader and Virtual Machine Contributor on the dask subnet read and join the
    subnet, and neither reads its VNet (Virtual Machine Contributor's ``virtualNetworks/read`` included)."""
    client = make_network_client(SUB, StaticTokenCredential(arm.token), arm.base_url, polling_interval=0)
    assert client.subnets.get(CONTROL_RG, CONTROL_VNET, "dask").address_prefix == "10.50.1.0/24"
    with pytest.raises(Exception, match=r"AuthorizationFailed.*virtualNetworks/read") as refused:
        client.virtual_networks.get(CONTROL_RG, CONTROL_VNET)
    assert getattr(refused.value, "status_code", None) == 403
    vnet_scope = f"{CONTROL_NET}/virtualNetworks/{CONTROL_VNET}"
    assert function_app_roles().roles_at(vnet_scope) == []
    assert sorted(function_app_roles().roles_at(f"{vnet_scope}/subnets/dask")) == [
        "Reader",
        "Virtual Machine Contributor",
    ]


def test_a_nic_may_join_the_dask_subnet_but_no_other(arm: FakeArm) -> None:
    """A PUT is also checked on what it links (``subnets/join/action`` on the subnet): ARM's
    LinkedAuthorizationFailed for a subnet the Function App holds no role on."""
    from azure.mgmt.network.models import NetworkInterface, NetworkInterfaceIPConfiguration, Subnet

    from shared.backends.arm import arm_call

    client = make_network_client(SUB, StaticTokenCredential(arm.token), arm.base_url, polling_interval=0)
    other = {"name": "other", "properties": {"addressPrefix": "10.50.2.0/24"}}
    dask = {"name": "dask", "properties": {"addressPrefix": "10.50.1.0/24"}}
    arm.seed(
        f"{CONTROL_NET}/virtualNetworks/{CONTROL_VNET}", {"location": LOC, "properties": {"subnets": [dask, other]}}
    )

    def nic(subnet: str) -> Any:
        subnet_id = f"{CONTROL_NET}/virtualNetworks/{CONTROL_VNET}/subnets/{subnet}"
        body = NetworkInterface(
            location=LOC,
            ip_configurations=[NetworkInterfaceIPConfiguration(name="ipconfig1", subnet=Subnet(id=subnet_id))],
        )
        action = f"creating network interface nic-{subnet}"
        return arm_call(
            action,
            lambda: client.network_interfaces.begin_create_or_update(RG, f"nic-{subnet}", body).result(),
            NO_RETRY,
        )

    assert nic("dask").ip_configurations[0].private_ip_address
    with pytest.raises(BackendError, match=r"403 LinkedAuthorizationFailed.*subnets/join/action.*subnets/other"):
        nic("other")


def test_roles_the_bundle_lacks_grant_nothing_and_are_only_data_plane_roles() -> None:
    """Stricter than Azure, never kinder: a role not in tests/data/builtin_roles.json grants nothing. Today
    those are the data-plane roles, which the ARM stand-in never needs (Storage is Azurite)."""
    unknown = {label.split(" ")[0] for label in function_app_roles().unknown_roles}
    assert unknown == {
        "storageBlobDataOwner",
        "storageQueueDataContributor",
        "storageTableDataContributor",
        "monitoringMetricsPublisher",
    }
    assert {a.role.name for a in function_app_roles().assignments} >= {
        "Network Contributor",
        "Virtual Machine Contributor",
        "Reader",
        "Managed Identity Operator",
    }


def test_roles_given_to_other_identities_are_not_the_function_apps() -> None:
    """Azure checks the caller's own assignments: the VM identity's role (vm-identity.bicep) grants the app
    nothing, and so does any other identity's that the Bicep declares."""
    rbac = function_app_roles()
    assert rbac.others == ("vm-identity.bicep:metricsPublisher",)
    assert not {a.declared_in for a in rbac.assignments} & set(rbac.others)
    assert all(a.declared_in.startswith("roles-") for a in rbac.assignments)


def test_a_principal_or_condition_the_reader_does_not_know_stops_it() -> None:
    """Counting an assignment for the app on a guess would be kinder than Azure: an unknown form is an error."""
    module = INFRA / "modules" / "roles-experiments.bicep"
    with pytest.raises(AssertionError, match="a principalId this reader does not know"):
        _is_function_app(module, "x", "00000000-0000-0000-0000-000000000001", {})
    assert not _is_function_app(module, "x", "principalId", {"principalId": "vmIdentity.outputs.principalId"})
    assert _is_function_app(module, "x", "principalId", {"principalId": FUNCTION_APP_PRINCIPAL})
    negated = {"operator": {"type": "not", "operands": {"bool_value": "keyless"}}}
    assert _deployed(module, "x", negated, {"keyless": "azureMLKeylessStorage"}, {"azureMLKeylessStorage": False})
    assert not _deployed(module, "x", "keyless", {"keyless": "azureMLKeylessStorage"}, {"azureMLKeylessStorage": False})
    with pytest.raises(AssertionError, match=r"Deployment\.flags needs"):
        _deployed(module, "x", "keyless", {"keyless": "azureMLKeylessStorage"}, {})


segment = st.text(alphabet="abcXYZ09-.", min_size=1, max_size=6)


@given(st.lists(segment, min_size=1, max_size=6), st.lists(segment, min_size=0, max_size=4))
def test_a_role_applies_at_its_scope_and_below_never_above(base: list[str], extra: list[str]) -> None:
    scope = "/" + "/".join(base)
    below = "/" + "/".join([*base, *extra])
    assert _covers(scope, below) and _covers(scope.upper(), below)  # ARM ids compare case-insensitively
    if extra:
        assert not _covers(below, scope)
    sibling = "/" + "/".join([*base[:-1], base[-1] + "x"])
    assert not _covers(scope, sibling)  # a prefix of a name is not a parent


def test_wildcards_match_as_in_azure() -> None:
    reader, network = builtin_roles()["acdd72a7-3385-48ef-bd42-f606fba81ae7"], function_app_roles()
    assert reader.allows("Microsoft.Network/virtualNetworks/subnets/read")
    assert not reader.allows("Microsoft.Network/virtualNetworks/subnets/write")
    operator = builtin_roles()["f1a07417-d97a-45cb-824c-7a7467783830"]
    assert operator.allows("Microsoft.ManagedIdentity/userAssignedIdentities/assign/action")
    assert not operator.allows("Microsoft.ManagedIdentity/userAssignedIdentities/write")
    custom = next(a.role for a in network.assignments if a.declared_in.endswith("clusterVmOperator"))
    assert custom.allows("Microsoft.Compute/virtualMachines/write")
    assert not custom.allows("Microsoft.Storage/storageAccounts/listKeys/action")
