"""``rapids-hpo plan`` for vmcluster: what ``provision``/``submit`` would create, without touching Azure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.backends.vmcluster.image import resolve_image
from shared.backends.vmcluster.section import VMClusterCompute
from shared.backends.vmcluster.settings import (
    NGC_VM_IMAGE,
    VMIdentity,
    cluster_env,
    cluster_kwargs,
    cluster_tags,
    run_seconds,
    scheduler_vm_name,
    subscription_of,
    worker_vm_prefix,
)
from shared.compute_spec import compute_section, gpus_per_node
from shared.config import AzureSettings

if TYPE_CHECKING:
    from shared.spec import ExperimentSpec


def plan(
    spec: ExperimentSpec,
    experiment_id: str = "exp-PLAN",
    *,
    identity: VMIdentity | None = None,
    azure: AzureSettings | None = None,
) -> dict[str, Any]:
    """What ``provision``/``submit`` would create for ``spec``, without touching Azure (JSON-able); ``azure``:
    the deployment's defaults (offline, the plan names none it is not given)."""
    azure = azure or AzureSettings()
    from shared.backends.vmcluster.handle import NetworkHandle
    from shared.backends.vmcluster.network_layout import dask_rules, network_names

    compute = compute_section(spec, VMClusterCompute)
    net = compute.network
    names = network_names(experiment_id)
    sub = subscription_of(compute, azure) or "<subscription>"
    base = f"/subscriptions/{sub}/resourceGroups/{compute.resource_group}/providers/Microsoft.Network"
    vnet = (net.existing_vnet or names.vnet).rsplit("/", 1)[-1]
    subnet = net.existing_subnet if net.existing_vnet else names.subnet
    nsg = (net.existing_security_group or names.nsg).rsplit("/", 1)[-1]
    handle = NetworkHandle(
        resource_group=compute.resource_group,
        location=compute.location,
        experiment_id=experiment_id,
        vnet_name=vnet,
        vnet_id=f"{base}/virtualNetworks/{vnet}",
        subnet_name=subnet or "",
        subnet_id=f"{base}/virtualNetworks/{vnet}/subnets/{subnet}",
        nsg_name=nsg,
        nsg_id=f"{base}/networkSecurityGroups/{nsg}",
        created=[],
    )
    env_vars = cluster_env(experiment_id=experiment_id)
    kwargs = cluster_kwargs(
        compute, handle, experiment_id=experiment_id, env_vars=env_vars, identity=identity, azure=azure
    )
    image = resolve_image(compute, azure)
    tags = {
        **cluster_tags(experiment_id, azure.instance_id),
        "creator": "dask-cloudprovider",
        "cluster-id": "<assigned at submit>",
    }
    seconds, basis = run_seconds(spec)
    profile = compute.billing(spec)
    nodes = profile.nodes
    node_hours = profile.node_hours(seconds, overheads=False)  # run_seconds counts the start-up
    notes = [
        "The control plane never connects to the cluster: it creates the VMs and reads the experiment's "
        "blob container, where the head node's driver writes trials, a heartbeat and the outcome.",
        "The VMs reach that container (and the deployment's registry, for its image) as the experiment's own "
        "managed identity, created at provision and deleted at teardown: no key or SAS in their boot script.",
        "Dask's ports 8786/8787 are admitted from the experiment's subnet only; no public IPs on the VMs; "
        "the dashboard listens on each head's loopback only.",
        f"Every VM pulls {image.describe()}; docker run {compute.docker_args}, as the image's user (uid 1001), "
        "which owns the node's files.",
        _head_note(compute),
    ]
    notes.append(_outbound_note(net.existing_vnet is not None, names.nat, names.nat_ip))
    if compute.spot:
        notes.append(
            f"Workers are Spot VMs (eviction policy Delete), the head on-demand; an evicted worker is replaced "
            f"and its trial retried, up to compute.max_evictions={compute.max_evictions} evictions."
        )
    if compute.use_marketplace_image:
        urn = ":".join(NGC_VM_IMAGE[k] for k in ("publisher", "offer", "sku", "version"))
        notes.append(f"Accept the NGC image terms once per subscription: az vm image terms accept --urn {urn}")
    if compute.max_node_hours is not None and node_hours > compute.max_node_hours:
        notes.append(
            f"The estimate ({node_hours:.2f} node-hours) exceeds max_node_hours ({compute.max_node_hours}): "
            "the cost guard will stop the run early."
        )
    return {
        "backend": "vmcluster",
        "experiment_id": experiment_id,
        "network": {
            "resource_group": compute.resource_group,
            "location": compute.location,
            "tags": cluster_tags(experiment_id, azure.instance_id),
            "virtual_network": {
                "name": vnet,
                "create": not net.existing_vnet,
                "address_space": None if net.existing_vnet else net.vnet_address_space,
            },
            "subnet": {
                "name": subnet,
                "create": not net.existing_vnet,
                "prefix": None if net.existing_vnet else net.subnet_prefix,
                "outbound": "the existing subnet's own NAT gateway (checked before any VM is created)"
                if net.existing_vnet
                else f"NAT gateway {names.nat}",
            },
            "nat_gateway": None
            if net.existing_vnet
            else {"name": names.nat, "create": True, "sku": "Standard", "public_ip": names.nat_ip},
            "network_security_group": {
                "name": nsg,
                "create": not net.existing_security_group,
                "rules": []
                if net.existing_security_group
                else [
                    rule.as_dict()
                    for rule in dask_rules(
                        net.allowed_source_prefixes,
                        ["<the subnet's prefix>"] if net.existing_vnet else [net.subnet_prefix],
                    )
                ],
            },
        },
        "cluster": {
            "kwargs": kwargs,
            "image": {
                "reference": image.reference,
                "pinned_by_digest": image.pinned,
                "registry": image.registry or None,
                "pulled_as": "the experiment's VM identity (AcrPull)" if image.registry else "anonymous",
                "installs_at_start": kwargs["env_vars"].get("EXTRA_PIP_PACKAGES", "").split(),
                "why": image.describe(),
            },
            "tags": tags,
            "vms": {
                "scheduler": {
                    "name": scheduler_vm_name("<cluster-id>"),
                    "size": compute.head_size(),
                    "priority": "Regular",
                    "runs": "the Dask scheduler and the HPO driver (the refit runs on a worker)",
                },
                "workers": {
                    "count": compute.n_workers,
                    "size": compute.vm_size,
                    "priority": "Spot" if compute.spot else "Regular",
                    "names": f"{worker_vm_prefix('<cluster-id>')}<8 hex digits>",
                },
            },
        },
        "cost": {
            "nodes": nodes,
            "hours": round(seconds / 3600, 3),
            "node_hours": round(node_hours, 3),
            "basis": basis,
            "max_node_hours": compute.max_node_hours,
        },
        "notes": notes,
    }


def _head_note(compute: VMClusterCompute) -> str:
    """Which size the head gets, and why: it runs the scheduler and the driver, never a trial."""
    why = "the head runs the Dask scheduler and the HPO driver only (every trial and the refit run on workers)"
    if compute.scheduler_vm_size is None:
        return f"The head is sized like a worker ({compute.vm_size}: compute.scheduler_vm_size is null), though {why}."
    gpus = gpus_per_node(compute.scheduler_vm_size)
    kind = f"{gpus} GPU(s) it will not use" if gpus else "no GPU, none needed"
    return f"The head is {compute.scheduler_vm_size} ({kind}), priced as its own size: {why}."


def _outbound_note(existing: bool, nat: str, nat_ip: str) -> str:
    if existing:
        return (
            "Outbound (image pulls, pip, Storage): the existing subnet must have a NAT gateway (the infra's dask "
            "subnet does) or default outbound access; a private subnet without one is refused before any VM."
        )
    return (
        f"Outbound (image pulls, pip, Storage): subnets are private by default, so the experiment's subnet gets "
        f"NAT gateway {nat} with public IP {nat_ip} (Standard, static), created and deleted with its network."
    )


class VMClusterPlanner:
    """Implements ``shared.ports.Planner``: the dry run is :func:`plan`."""

    full_plan_shows = "the VM arguments"

    def dry_run(self, spec: ExperimentSpec) -> dict[str, Any]:
        return plan(spec)

    def describe(self, spec: ExperimentSpec) -> list[str]:
        compute = compute_section(spec, VMClusterCompute)
        net = compute.network
        network = "reuses VNet " + net.existing_vnet if net.existing_vnet else "a VNet, subnet, NSG and NAT gateway"
        scheduler = compute.head_size()
        trials = f"{spec.effective_total_trials()} trials, {spec.limits.max_concurrent_trials} at a time"
        return [
            f"in {compute.resource_group} ({compute.location}): {network}, tagged for teardown",
            f"1 head VM ({scheduler}: scheduler and driver only, no trials) and {compute.n_workers} worker VMs "
            f"({compute.vm_size}), no public IPs",
            f"image {resolve_image(compute, AzureSettings()).describe()}; run as its user (uid 1001)",
            f"the HPO driver beside the scheduler: {trials}",
        ]
