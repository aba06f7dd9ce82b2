"""The timer sweep's cost guard: delete clusters and networks whose experiment is gone.

A resource is considered only when it carries this control plane's instance tag
(``rapids-hpo-instance=<RAPIDS_HPO_INSTANCE_ID>``, a value the deployment sets, e.g. its storage
account's name): two control planes sharing a resource group (dev and prod, a local ``serve`` with
``AZURE_*`` set) never see each other's clusters. Without an instance id the sweep does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.errors import BackendError

if TYPE_CHECKING:
    from shared.backends.arm import RetrySettings
    from shared.backends.vmcluster.vm_teardown import OrphanedCluster

ClientsFor = Callable[[str], tuple[Any, Any]]
"""Builds ``(compute client, network client)`` for a subscription id."""


def find_orphans(
    clients: ClientsFor,
    live_experiment_ids: set[str],
    resource_group: str | None,
    subscription_id: str | None,
    retry: RetrySettings,
    instance: str,
) -> list[OrphanedCluster]:
    """Our clusters (tagged with this deployment's ``instance`` id) in a resource group whose experiment is
    not live: VMs of a crashed or lost teardown that would otherwise stay billed."""
    from shared.backends.vmcluster.vm_teardown import find_orphaned_clusters

    if not resource_group or not subscription_id or not instance:
        raise BackendError("finding orphans needs a resource group, a subscription and RAPIDS_HPO_INSTANCE_ID")
    compute_client, network_client = clients(subscription_id)
    return find_orphaned_clusters(
        compute_client,
        network_client,
        resource_group=resource_group,
        live_experiment_ids=live_experiment_ids,
        instance_id=instance,
        retry=retry,
    )


def delete_orphans(
    clients: ClientsFor, orphans: list[OrphanedCluster], subscription_id: str | None, retry: RetrySettings
) -> list[str]:
    """Delete what :func:`find_orphans` found; returns the ids deleted."""
    from shared.backends.vmcluster.vm_teardown import delete_cluster_resources

    if not subscription_id:
        raise BackendError("deleting orphans needs a subscription")
    compute_client, network_client = clients(subscription_id)
    deleted: list[str] = []
    for orphan in orphans:
        deleted += delete_cluster_resources(
            compute_client,
            network_client,
            resource_group=orphan.resource_group,
            resources=orphan.resources,
            retry=retry,
        )
    return deleted


def sweep_orphans(
    clients: ClientsFor,
    live_experiment_ids: set[str],
    resource_group: str,
    subscription_id: str,
    retry: RetrySettings,
    instance: str,
) -> list[str]:
    """Delete this instance's clusters and networks in ``resource_group`` whose experiment is not live;
    returns the ARM ids deleted (nothing at all without an instance id)."""
    from shared.backends.vmcluster.network import delete_network_resources, find_orphaned_networks

    if not instance:
        return []
    clusters = find_orphans(clients, live_experiment_ids, resource_group, subscription_id, retry, instance)
    deleted = delete_orphans(clients, clusters, subscription_id, retry)
    _, network_client = clients(subscription_id)
    networks = find_orphaned_networks(
        network_client,
        resource_group=resource_group,
        live_experiment_ids=live_experiment_ids,
        instance_id=instance,
        retry=retry,
    )
    return deleted + delete_network_resources(
        network_client, resource_group=resource_group, resource_ids=networks, retry=retry
    )
