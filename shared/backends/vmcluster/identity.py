"""Each experiment's VMs run as a managed identity of their own, which reaches that experiment's container only.

Why: a VM's ``customData`` is readable by anyone with read access to the VM resource and from inside the VM
(instance metadata), and Azure says it must carry no secret; until now it carried the area's SAS and the
cluster's TLS key. Now the boot script holds no secret at all: the VMs ask the instance metadata service for
a token of their identity and read their code, their TLS key (``compute/tls.json``, written there by the
control plane) and the record with it; the HPO driver writes trials and artifacts with it.

Per experiment, not per deployment: one identity shared by every experiment's VMs, holding a role on each
live experiment's container, would let one experiment's VMs read another's data. So :func:`ensure_identity`
creates a user-assigned identity in the experiment's resource group (tagged like the cluster) and assigns it
Storage Blob Data Contributor at the scope of the experiment's container only; :func:`delete_identity` undoes
both at teardown. The Function App may create identities there (its custom cluster role) and assign that
one role on its storage account (a Role Based Access Control Administrator assignment whose condition allows
that role only, to service principals only: infra/modules/roles-controlplane.bicep).

Azure's delays: a new identity's principal replicates through Entra for a while, so the role assignment
names its ``principalType`` (ARM then skips the lookup that would fail with ``PrincipalNotFound``); a new
role assignment takes up to minutes to apply to Storage's data plane, so ``boot.py`` retries a 403.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING, Any

from shared.backends.arm import arm_call, is_not_found, make_arm_client
from shared.backends.vmcluster.handle import IdentityHandle

if TYPE_CHECKING:
    from shared.backends.arm import RetrySettings

STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
"""The built-in role's GUID (infra/modules/role-definitions.bicep: ``storageBlobDataContributor``)."""
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
"""AcrPull's GUID (role-definitions.bicep: ``acrPull``): the VMs pull the deployment's project image."""


def identity_name(experiment_id: str) -> str:
    """A deterministic name (a redelivered provision finds the same identity): ``id-rhpo-<12 hex>``."""
    return f"id-rhpo-{hashlib.sha256(experiment_id.encode()).hexdigest()[:12]}"


def container_scope(storage_account_id: str, container: str) -> str:
    """The ARM scope of one blob container of a storage account."""
    return f"{storage_account_id.rstrip('/')}/blobServices/default/containers/{container}"


def make_msi_client(subscription_id: str, credential: Any = None, base_url: str | None = None) -> Any:
    from azure.mgmt.msi import ManagedServiceIdentityClient

    return make_arm_client(ManagedServiceIdentityClient, subscription_id, credential, base_url)


def make_authorization_client(subscription_id: str, credential: Any = None, base_url: str | None = None) -> Any:
    from azure.mgmt.authorization import AuthorizationManagementClient

    return make_arm_client(AuthorizationManagementClient, subscription_id, credential, base_url)


def ensure_identity(
    msi_client: Any,
    authorization_client: Any,
    *,
    resource_group: str,
    location: str,
    experiment_id: str,
    tags: dict[str, str],
    scope: str,
    retry: RetrySettings,
    registry_scope: str = "",
) -> IdentityHandle:
    """Create (or find) the experiment's identity and give it Storage Blob Data Contributor at ``scope``
    (one container) and, with ``registry_scope`` (the deployment's registry, when the run's image comes from
    there), AcrPull on that registry. Every PUT is idempotent: the identity's name and the assignments' GUIDs
    are derived from the experiment, the principal, the role and the scope."""
    from azure.mgmt.msi.models import Identity

    name = identity_name(experiment_id)
    identity = arm_call(
        f"creating managed identity {name}",
        lambda: msi_client.user_assigned_identities.create_or_update(
            resource_group, name, Identity(location=location, tags=tags)
        ),
        retry,
    )
    roles = [(scope, STORAGE_BLOB_DATA_CONTRIBUTOR, "Storage Blob Data Contributor", "its own container")]
    if registry_scope:
        roles.append((registry_scope, ACR_PULL, "AcrPull", "the deployment's registry (the project image)"))
    assignment_id, *registry = [
        assign_role(
            authorization_client,
            scope=where,
            principal_id=identity.principal_id,
            role=role,
            what=f"{label} to {name} on {what}",
            description=f"rapids-hpo experiment {experiment_id}: its VMs' access to {what}",
            retry=retry,
        )
        for where, role, label, what in roles
    ]
    registry_assignment_id = registry[0] if registry else None
    return IdentityHandle(
        resource_id=identity.id,
        client_id=identity.client_id,
        principal_id=identity.principal_id,
        role_assignment_id=assignment_id,
        registry_assignment_id=registry_assignment_id,
    )


def assign_role(
    authorization_client: Any,
    *,
    scope: str,
    principal_id: str,
    role: str,
    what: str,
    description: str,
    retry: RetrySettings,
) -> str:
    """Assign built-in ``role`` (its GUID) to a service principal at ``scope``; the assignment's name derives from
    the scope, the principal and the role, so a redelivered provision PUTs the same one. Returns its ARM id."""
    from azure.mgmt.authorization.v2022_04_01.models import RoleAssignmentCreateParameters

    subscription = scope.split("/")[2]
    role_id = f"/subscriptions/{subscription}/providers/Microsoft.Authorization/roleDefinitions/{role}"
    name = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{scope.lower()}|{principal_id}|{role_id.lower()}"))
    parameters = RoleAssignmentCreateParameters(
        role_definition_id=role_id,
        principal_id=principal_id,
        principal_type="ServicePrincipal",  # skips the directory lookup a just-created principal would fail
        description=description,
    )
    assignment = arm_call(
        f"assigning {what}",
        lambda: authorization_client.role_assignments.create(scope, name, parameters),
        retry,
    )
    return str(assignment.id)


def delete_identity(
    msi_client: Any, authorization_client: Any, handle: IdentityHandle, *, resource_group: str, retry: RetrySettings
) -> None:
    """Delete the role assignments, then the identity (any gone already counts as deleted)."""
    for assignment_id in (handle.role_assignment_id, handle.registry_assignment_id):
        if assignment_id:
            _delete_assignment(authorization_client, assignment_id, retry)
    _delete_identity_only(msi_client, handle.resource_id, resource_group, retry)


def _delete_assignment(authorization_client: Any, assignment_id: str, retry: RetrySettings) -> None:
    def delete() -> None:
        try:
            authorization_client.role_assignments.delete_by_id(assignment_id)
        except Exception as exc:
            if not is_not_found(exc):
                raise

    arm_call("deleting the VM identity's role assignment", delete, retry)


def _delete_identity_only(msi_client: Any, resource_id: str, resource_group: str, retry: RetrySettings) -> None:
    def delete() -> None:
        try:
            msi_client.user_assigned_identities.delete(resource_group, resource_id.rsplit("/", 1)[-1])
        except Exception as exc:
            if not is_not_found(exc):
                raise

    arm_call("deleting the VM identity", delete, retry)


def sweep_identities(
    msi_client: Any,
    authorization_client: Any,
    *,
    resource_group: str,
    storage_account_id: str,
    live_experiment_ids: set[str],
    instance_id: str,
    retry: RetrySettings,
    registry_id: str = "",
) -> list[str]:
    """Delete this deployment's experiment identities (tagged with ``instance_id``) in ``resource_group``
    whose experiment is not live, their role assignments on the storage account and the registry first (a
    teardown that never ran leaves them); returns the ids deleted. Nothing without an instance id."""
    from shared.backends.vmcluster.network_layout import CREATED_BY, CREATED_BY_TAG, EXPERIMENT_TAG, INSTANCE_TAG

    if not instance_id:
        return []
    listed = arm_call(
        f"listing managed identities in {resource_group}",
        lambda: list(msi_client.user_assigned_identities.list_by_resource_group(resource_group)),
        retry,
    )
    deleted: list[str] = []
    for identity in listed:
        tags = identity.tags or {}
        ours = tags.get(INSTANCE_TAG) == instance_id and tags.get(CREATED_BY_TAG) == CREATED_BY
        if not ours or not tags.get(EXPERIMENT_TAG) or tags[EXPERIMENT_TAG] in live_experiment_ids:
            continue
        assignments = [
            a
            for scope in (storage_account_id, registry_id)
            for a in _assignments_of(authorization_client, scope, identity, retry)
        ]
        for assignment in assignments:
            _delete_assignment(authorization_client, assignment.id, retry)
            deleted.append(assignment.id)
        _delete_identity_only(msi_client, identity.id, resource_group, retry)
        deleted.append(identity.id)
    return deleted


def _assignments_of(authorization_client: Any, scope: str, identity: Any, retry: RetrySettings) -> list[Any]:
    """The role assignments of ``identity``'s principal at, above or below ``scope`` (none without a scope)."""
    if not scope:
        return []
    query = f"principalId eq '{identity.principal_id}'"

    def listed() -> list[Any]:
        return list(authorization_client.role_assignments.list_for_scope(scope, filter=query))

    result: list[Any] = arm_call(f"listing the role assignments of {identity.name}", listed, retry)
    return result
