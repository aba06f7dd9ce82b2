"""Each experiment's VMs reach their own container, and nothing else, as an identity of their own (issue 22).

Against the strict stand-ins: the local ARM server with the Function App's roles as the Bicep declares them
(tests/rbac.py, the constrained delegation's condition included), and Storage's data plane checking each
Entra token's roles at the container's scope (tests/entra_standin.py) in front of Azurite. The real SDKs on
both sides: azure-mgmt-msi/-authorization create and assign, azure-identity and azure-storage-blob read.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.identity import ManagedIdentityCredential
from azure.storage.blob import ContainerClient

from shared.backends.arm import RetrySettings
from shared.backends.vmcluster.identity import (
    STORAGE_BLOB_DATA_CONTRIBUTOR,
    container_scope,
    ensure_identity,
    make_authorization_client,
    make_msi_client,
)
from shared.config import AZURITE_KEY
from shared.store.azure import AzureStore
from tests.arm_server import FakeArm, StaticTokenCredential
from tests.entra_standin import ImdsServer, StorageProxy
from tests.rbac import function_app_rbac

pytestmark = pytest.mark.azurite
SUB = "00000000-0000-0000-0000-000000000003"
RG, CONTROL_RG = "rg-identity", "rg-control"
ACCOUNT = f"/subscriptions/{SUB}/resourceGroups/{CONTROL_RG}/providers/Microsoft.Storage/storageAccounts/strhpostandin"
RETRY = RetrySettings(attempts=1, initial_wait_s=0, max_wait_s=0, jitter_s=0, sleep=lambda _: None)


@pytest.fixture
def arm() -> Iterator[FakeArm]:
    with FakeArm(rbac=function_app_rbac(SUB, RG, CONTROL_RG)) as server:
        yield server


@pytest.fixture
def proxy(arm: FakeArm, azure_store: AzureStore) -> Iterator[StorageProxy]:
    azurite = str(azure_store.blob_service.url).rstrip("/")
    server = StorageProxy(arm.directory, account_id=ACCOUNT, azurite=azurite, account_key=AZURITE_KEY)
    yield server
    server.close()


@pytest.fixture
def imds(arm: FakeArm) -> Iterator[ImdsServer]:
    vms: dict[str, list[str]] = {}
    server = ImdsServer(arm.directory, lambda vm: vms.get(vm, []))
    server.vms = vms  # type: ignore[attr-defined]  # the test attaches identities to "VMs" here
    yield server
    server.close()


def _code(error: HttpResponseError) -> str | None:
    """ARM's error code of a failed management call."""
    return getattr(error.error, "code", None)


def _clients(arm: FakeArm) -> tuple[Any, Any]:
    credential = StaticTokenCredential(arm.token)
    return make_msi_client(SUB, credential, arm.base_url), make_authorization_client(SUB, credential, arm.base_url)


def _area(store: AzureStore, name: str) -> str:
    container = store.blob_service.get_container_client(f"{store.container_name}-run-{name}")
    container.create_container()
    container.upload_blob("compute/code.zip", b"code of " + name.encode())
    return str(container.container_name)


def _experiment_identity(arm: FakeArm, container: str) -> Any:
    return ensure_identity(
        *_clients(arm),
        resource_group=RG,
        location="westeurope",
        experiment_id=f"exp-{uuid.uuid4().hex[:6]}",
        tags={},
        scope=container_scope(ACCOUNT, container),
        retry=RETRY,
    )


def _as_vm(
    monkeypatch: pytest.MonkeyPatch, imds: ImdsServer, proxy: StorageProxy, vm: str, client_id: str, container: str
) -> ContainerClient:
    """The container as a process on VM ``vm`` reaches it: a token of the identity from its instance metadata."""
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.authority(vm))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(proxy.cert))
    return ContainerClient(proxy.url, container, credential=ManagedIdentityCredential(client_id=client_id))


def test_a_vm_reads_its_own_experiments_container_and_gets_403_on_anothers(
    arm: FakeArm, azure_store: AzureStore, proxy: StorageProxy, imds: ImdsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, theirs = _area(azure_store, "mine"), _area(azure_store, "theirs")
    identity = _experiment_identity(arm, mine)
    _experiment_identity(arm, theirs)  # another live experiment, with an identity and role of its own
    imds.vms["vm-mine"] = [identity.resource_id]  # type: ignore[attr-defined]
    client = _as_vm(monkeypatch, imds, proxy, "vm-mine", identity.client_id, mine)

    assert client.download_blob("compute/code.zip").readall() == b"code of mine"
    client.upload_blob("trials/0000000000.json", b"{}", overwrite=True)
    other = _as_vm(monkeypatch, imds, proxy, "vm-mine", identity.client_id, theirs)
    with pytest.raises(HttpResponseError) as refused:
        other.download_blob("compute/code.zip").readall()
    assert (
        refused.value.status_code == 403
        and getattr(refused.value, "error_code", None) == "AuthorizationPermissionMismatch"
    )
    with pytest.raises(HttpResponseError) as listing:
        list(other.list_blobs())
    assert getattr(listing.value, "error_code", None) == "AuthorizationPermissionMismatch"
    with pytest.raises(HttpResponseError):  # no container-level writes either, in its own container
        client.delete_container()
    [assignment] = [a for a in arm.directory.assignments.values() if a.principal_id == identity.principal_id]
    assert assignment.scope.endswith(f"/containers/{mine}") and assignment.role_id == STORAGE_BLOB_DATA_CONTRIBUTOR


def test_a_new_role_applies_only_after_azures_delay_and_a_vm_without_the_identity_gets_no_token(
    arm: FakeArm, azure_store: AzureStore, proxy: StorageProxy, imds: ImdsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    arm.directory.propagation_s = 1.5
    mine = _area(azure_store, "fresh")
    identity = _experiment_identity(arm, mine)
    imds.vms["vm-a"] = [identity.resource_id]  # type: ignore[attr-defined]
    client = _as_vm(monkeypatch, imds, proxy, "vm-a", identity.client_id, mine)
    with pytest.raises(HttpResponseError) as early:
        client.download_blob("compute/code.zip").readall()
    assert getattr(early.value, "error_code", None) == "AuthorizationPermissionMismatch"  # what boot.py retries
    time.sleep(1.6)
    assert client.download_blob("compute/code.zip").readall() == b"code of fresh"

    query = f"api-version=2018-02-01&resource=https://storage.azure.com/&client_id={identity.client_id}"
    for vm, metadata in (("vm-b", "true"), ("vm-a", "false")):  # not attached to vm-b; the header is required
        ask = urllib.request.Request(f"{imds.authority(vm)}/metadata/identity/oauth2/token?{query}")
        ask.add_header("Metadata", metadata)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(ask, timeout=10)
        assert refused.value.code == 400


def test_the_function_app_may_assign_that_one_role_and_no_other(arm: FakeArm, azure_store: AzureStore) -> None:
    """The constrained delegation (infra/modules/roles-controlplane.bicep): Storage Blob Data Contributor
    below the storage account, and nothing else, e.g. not Storage Blob Data Owner, not on the account."""
    from azure.mgmt.authorization.v2022_04_01.models import RoleAssignmentCreateParameters

    identity = _experiment_identity(arm, _area(azure_store, "scope"))
    authorization = _clients(arm)[1]
    owner = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"  # Storage Blob Data Owner
    parameters = RoleAssignmentCreateParameters(
        role_definition_id=f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{owner}",
        principal_id=identity.principal_id,
        principal_type="ServicePrincipal",
    )
    with pytest.raises(HttpResponseError) as denied:
        authorization.role_assignments.create(ACCOUNT, str(uuid.uuid4()), parameters)
    assert denied.value.status_code == 403 and _code(denied.value) == "AuthorizationFailed"
    other_group = f"/subscriptions/{SUB}/resourceGroups/{RG}"
    parameters.role_definition_id = parameters.role_definition_id.replace(owner, STORAGE_BLOB_DATA_CONTRIBUTOR)
    with pytest.raises(HttpResponseError) as elsewhere:  # the right role, but not under the storage account
        authorization.role_assignments.create(other_group, str(uuid.uuid4()), parameters)
    assert elsewhere.value.status_code == 403
    parameters.principal_type = "User"
    with pytest.raises(HttpResponseError) as to_a_user:  # the right role and scope, to a user: not delegated
        authorization.role_assignments.create(container_scope(ACCOUNT, "scope"), str(uuid.uuid4()), parameters)
    assert to_a_user.value.status_code == 403


def test_a_just_created_identity_is_not_found_unless_the_assignment_names_its_type(azure_store: AzureStore) -> None:
    """Entra's replication delay: ARM looks the principal up and fails ``PrincipalNotFound`` unless the request
    says ``principalType`` (which :func:`ensure_identity` does; the SDK's model would send ``User``, which
    ARM refuses for a managed identity). Without the Function App's roles here: its delegation's condition
    refuses an assignment that names no type before ARM looks anything up."""
    from azure.mgmt.authorization.v2022_04_01.models import RoleAssignmentCreateParameters
    from azure.mgmt.msi.v2024_11_30.models import Identity

    with FakeArm() as arm:
        msi, authorization = _clients(arm)
        created = msi.user_assigned_identities.create_or_update(RG, "id-fresh", Identity(location="westeurope"))
        role = f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{STORAGE_BLOB_DATA_CONTRIBUTOR}"
        scope = container_scope(ACCOUNT, _area(azure_store, "replica"))
        bare = RoleAssignmentCreateParameters(role_definition_id=role, principal_id=created.principal_id)
        with pytest.raises(HttpResponseError) as as_user:  # the model's default principalType
            authorization.role_assignments.create(scope, str(uuid.uuid4()), bare)
        assert _code(as_user.value) == "UnmatchedPrincipalType"
        bare.principal_type = None  # type: ignore[assignment]  # omitted from the request
        with pytest.raises(HttpResponseError) as missing:
            authorization.role_assignments.create(scope, str(uuid.uuid4()), bare)
        assert _code(missing.value) == "PrincipalNotFound"
        bare.principal_type = "ServicePrincipal"
        assert (
            authorization.role_assignments.create(scope, str(uuid.uuid4()), bare).principal_id == created.principal_id
        )


def test_the_sweep_deletes_the_identities_and_roles_of_experiments_that_are_gone(
    arm: FakeArm, azure_store: AzureStore
) -> None:
    """A teardown that never ran leaves an experiment's identity and its role: the timer's sweep deletes them
    (role first), and only this deployment's, and only for experiments no longer live."""
    from shared.backends.vmcluster.identity import sweep_identities
    from shared.backends.vmcluster.settings import cluster_tags

    made = {}
    for experiment, instance in (("exp-gone", "inst"), ("exp-live", "inst"), ("exp-other", "another")):
        made[experiment] = ensure_identity(
            *_clients(arm),
            resource_group=RG,
            location="westeurope",
            experiment_id=experiment,
            tags=cluster_tags(experiment, instance),
            scope=container_scope(ACCOUNT, _area(azure_store, experiment)),
            retry=RETRY,
        )
    deleted = sweep_identities(
        *_clients(arm),
        resource_group=RG,
        storage_account_id=ACCOUNT,
        live_experiment_ids={"exp-live"},
        instance_id="inst",
        retry=RETRY,
    )
    gone = made["exp-gone"]
    assert deleted == [gone.role_assignment_id, gone.resource_id]
    left = {i["id"] for i in arm.of_type("userAssignedIdentities")}
    assert left == {made["exp-live"].resource_id, made["exp-other"].resource_id}
    assert {a.principal_id for a in arm.directory.assignments.values()} == {
        made["exp-live"].principal_id,
        made["exp-other"].principal_id,
    }
    assert (
        sweep_identities(
            *_clients(arm),
            resource_group=RG,
            storage_account_id=ACCOUNT,
            live_experiment_ids=set(),
            instance_id="",
            retry=RETRY,
        )
        == []
    )  # no instance id: touches nothing
