"""Find and delete the Azure resources of a Dask ``AzureVMCluster`` by tag, never from memory.

dask-cloudprovider tags every VM, NIC and public IP it creates with ``creator=dask-cloudprovider`` and
``cluster-id=<8 hex digits>``; the ``vmcluster`` backend adds ``rapids-hpo-experiment=<id>`` and
``created-by=rapids-hpo-control`` (see ``shared.backends.vmcluster``). OS disks carry no tags (Azure
does not copy a VM's tags to the disk it creates from the image), so a disk is ours when a matched VM
names it, when it carries our tags, or when its name starts with ``dask-<cluster-id>-`` (the VM's name,
which Azure puts at the start of the disk's name; dask-cloudprovider's own cleanup matches the same way).

Deletion order is Azure's dependency order: VMs, then NICs, then public IPs, then disks (a NIC, IP or
disk still attached cannot be deleted). "Already gone" (404) counts as success. Every call goes through
:func:`shared.backends.arm.arm_call` (409/429/5xx retried); resources of one kind are deleted in
parallel, because deleting a GPU VM takes minutes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.backends.arm import DEFAULT_RETRY, RetrySettings, arm_call, is_not_found, make_arm_client
from shared.backends.vmcluster.network_layout import CREATED_BY, CREATED_BY_TAG, EXPERIMENT_TAG, INSTANCE_TAG
from shared.errors import BackendError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.network import NetworkManagementClient

log = logging.getLogger(__name__)

CLUSTER_ID_TAG = "cluster-id"
"""dask-cloudprovider's tag (``VMCluster.get_tags``) naming the cluster a resource belongs to."""
CREATOR_TAG = "creator"
CREATOR = "dask-cloudprovider"

_KINDS = ("virtualmachines", "networkinterfaces", "publicipaddresses", "disks")
_LABELS = {
    "virtualmachines": "virtual machine",
    "networkinterfaces": "network interface",
    "publicipaddresses": "public IP address",
    "disks": "disk",
}


@dataclass
class ClusterResources:
    """ARM ids of one cluster's (or one experiment's) resources, by kind."""

    vms: list[str] = field(default_factory=list)
    nics: list[str] = field(default_factory=list)
    public_ips: list[str] = field(default_factory=list)
    disks: list[str] = field(default_factory=list)

    def ids(self) -> list[str]:
        """Every id, in deletion order."""
        return [*self.vms, *self.nics, *self.public_ips, *self.disks]

    def __bool__(self) -> bool:
        return bool(self.ids())


def make_compute_client(
    subscription_id: str,
    credential: TokenCredential | None = None,
    base_url: str | None = None,
    *,
    polling_interval: float | None = None,
) -> ComputeManagementClient:
    """A ``ComputeManagementClient`` (see :func:`shared.backends.arm.make_arm_client`)."""
    from azure.mgmt.compute import ComputeManagementClient

    return make_arm_client(
        ComputeManagementClient, subscription_id, credential, base_url, polling_interval=polling_interval
    )


def is_ours(tags: dict[str, str] | None, *, cluster_ids: Iterable[str] = (), experiment_id: str | None = None) -> bool:
    """Whether a resource's tags put it in one of ``cluster_ids`` or in ``experiment_id``'s cluster."""
    tags = tags or {}
    if tags.get(CLUSTER_ID_TAG) and tags.get(CLUSTER_ID_TAG) in set(cluster_ids):
        return True
    return bool(
        experiment_id
        and tags.get(EXPERIMENT_TAG) == experiment_id
        and tags.get(CREATED_BY_TAG) == CREATED_BY
        and tags.get(CLUSTER_ID_TAG)
    )


def find_cluster_resources(
    compute: ComputeManagementClient,
    network: NetworkManagementClient,
    *,
    resource_group: str,
    cluster_ids: Iterable[str] = (),
    experiment_id: str | None = None,
    retry: RetrySettings = DEFAULT_RETRY,
) -> ClusterResources:
    """The VMs, NICs, public IPs and disks of ``cluster_ids`` and of ``experiment_id``'s clusters.

    Found by listing the resource group and matching tags; the experiment tag also finds a cluster
    whose id never reached the store (a crash between creating VMs and recording them).
    """
    wanted = {c for c in cluster_ids if c}
    if not wanted and not experiment_id:
        raise ValueError("find_cluster_resources needs a cluster id or an experiment id")

    def listing(label: str, fn: Callable[[], Iterable[Any]]) -> list[Any]:
        return arm_call(f"listing {label} in resource group {resource_group}", lambda: list(fn()), retry)

    vms = listing("virtual machines", lambda: compute.virtual_machines.list(resource_group))
    nics = listing("network interfaces", lambda: network.network_interfaces.list(resource_group))
    ips = listing("public IP addresses", lambda: network.public_ip_addresses.list(resource_group))
    disks = listing("disks", lambda: compute.disks.list_by_resource_group(resource_group))

    found = ClusterResources()
    for resource in (*vms, *nics, *ips):
        if is_ours(resource.tags, cluster_ids=wanted, experiment_id=experiment_id):
            wanted.add((resource.tags or {})[CLUSTER_ID_TAG])  # an experiment's cluster: its disks too
    os_disks: set[str] = set()
    for vm in vms:
        if is_ours(vm.tags, cluster_ids=wanted, experiment_id=experiment_id):
            found.vms.append(vm.id)
            os_disks |= {d.lower() for d in _vm_disk_ids(vm)}
    found.nics = [n.id for n in nics if is_ours(n.tags, cluster_ids=wanted, experiment_id=experiment_id)]
    found.public_ips = [p.id for p in ips if is_ours(p.tags, cluster_ids=wanted, experiment_id=experiment_id)]
    prefixes = tuple(f"dask-{c}-" for c in wanted)
    found.disks = [
        d.id
        for d in disks
        if d.id.lower() in os_disks
        or is_ours(d.tags, cluster_ids=wanted, experiment_id=experiment_id)
        or (prefixes and (d.name or "").startswith(prefixes))
    ]
    return found


def delete_cluster_resources(
    compute: ComputeManagementClient,
    network: NetworkManagementClient,
    *,
    resource_group: str,
    resources: ClusterResources,
    retry: RetrySettings = DEFAULT_RETRY,
    parallel: int = 8,
) -> list[str]:
    """Delete VMs, then NICs, then public IPs, then disks; returns the ids deleted now (404s left out).

    Refuses ids outside ``resource_group`` or of another kind than the list they are in.
    """
    from azure.mgmt.core.tools import parse_resource_id

    operations = {
        "virtualmachines": compute.virtual_machines,
        "networkinterfaces": network.network_interfaces,
        "publicipaddresses": network.public_ip_addresses,
        "disks": compute.disks,
    }
    deleted: list[str] = []
    stages = zip(_KINDS, (resources.vms, resources.nics, resources.public_ips, resources.disks), strict=True)
    for kind, ids in stages:
        names: list[tuple[str, str]] = []
        for rid in dict.fromkeys(ids):
            parts: Mapping[str, Any] = parse_resource_id(rid)
            if (parts.get("type") or "").lower() != kind or parts.get("children"):
                raise BackendError(f"refusing to delete {rid!r}: not a {_LABELS[kind]}")
            if (parts.get("resource_group") or "").lower() != resource_group.lower():
                raise BackendError(f"refusing to delete {rid!r}: not in resource group {resource_group!r}")
            names.append((rid, parts["name"]))
        if not names:
            continue

        def _delete(item: tuple[str, str], ops: Any = operations[kind], kind: str = kind) -> str | None:
            rid, name = item

            def call() -> bool:
                try:
                    ops.begin_delete(resource_group, name).result()
                except Exception as exc:
                    if is_not_found(exc):
                        return False
                    raise
                return True

            gone_now = arm_call(f"deleting {_LABELS[kind]} {name}", call, retry)
            log.info("%s %s %s", _LABELS[kind], rid, "deleted" if gone_now else "was already gone")
            return rid if gone_now else None

        with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(names)))) as pool:
            deleted.extend(rid for rid in pool.map(_delete, names) if rid is not None)
    return deleted


@dataclass(frozen=True)
class OrphanedCluster:
    """A cluster whose experiment is no longer live, and its resources."""

    experiment_id: str | None
    cluster_id: str
    resource_group: str
    resources: ClusterResources


def find_orphaned_clusters(
    compute: ComputeManagementClient,
    network: NetworkManagementClient,
    *,
    resource_group: str,
    live_experiment_ids: set[str],
    instance_id: str,
    retry: RetrySettings = DEFAULT_RETRY,
) -> list[OrphanedCluster]:
    """This control plane's clusters in ``resource_group`` (tagged ``created-by=rapids-hpo-control`` and
    ``rapids-hpo-instance=<instance_id>``) whose experiment is not in ``live_experiment_ids``; sorted by
    cluster id. Clusters of other tools and of other control planes are left alone."""
    listing = {
        "virtual machines": lambda: compute.virtual_machines.list(resource_group),
        "network interfaces": lambda: network.network_interfaces.list(resource_group),
        "public IP addresses": lambda: network.public_ip_addresses.list(resource_group),
    }
    owners: dict[str, str | None] = {}
    for label, fn in listing.items():
        resources = arm_call(f"listing {label} in resource group {resource_group}", lambda fn=fn: list(fn()), retry)  # type: ignore[misc]
        for resource in resources:
            tags = resource.tags or {}
            cluster_id = tags.get(CLUSTER_ID_TAG)
            if not cluster_id or tags.get(CREATED_BY_TAG) != CREATED_BY or tags.get(INSTANCE_TAG) != instance_id:
                continue
            if tags.get(EXPERIMENT_TAG) not in live_experiment_ids:
                owners.setdefault(cluster_id, tags.get(EXPERIMENT_TAG))
    orphans = []
    for cluster_id in sorted(owners):
        found = find_cluster_resources(
            compute, network, resource_group=resource_group, cluster_ids=[cluster_id], retry=retry
        )
        orphans.append(OrphanedCluster(owners[cluster_id], cluster_id, resource_group, found))
    return orphans


def _vm_disk_ids(vm: Any) -> list[str]:
    profile = getattr(vm, "storage_profile", None)
    if profile is None:
        return []
    disks = [profile.os_disk, *(profile.data_disks or [])] if profile.os_disk else list(profile.data_disks or [])
    return [d.managed_disk.id for d in disks if d is not None and d.managed_disk and d.managed_disk.id]
