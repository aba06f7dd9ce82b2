"""The VNet, subnet and NSG a ``vmcluster`` run lives in: idempotent provisioning and teardown.

Everything goes through the real ``azure-mgmt-network`` SDK. Resources are found by name and
owned by tag (``rapids-hpo-experiment=<id>``, ``created-by=rapids-hpo-control``): a re-run reuses
and reconciles what this experiment created before, refuses to touch a same-named resource it does
not own, and never creates or deletes ``existing_*`` resources the spec names. Teardown deletes only
what :class:`NetworkHandle` lists as created, in dependency order (VNet, NAT gateway, its public IP, NSG);
"already gone" counts as success.

**A way out.** Subnets written with Microsoft.Network API 2025-07-01 or later (the SDK sends 2026-03-01)
are private by default (``defaultOutboundAccess: false``), and the VMs' NICs have no public IP: without an
explicit path a VM pulls no image, installs nothing and reaches no Storage. So a created subnet gets a NAT
gateway (Standard, one static public IP; about the price of a small VM per hour plus data processed),
created and deleted with the experiment's network. An existing subnet must bring its own path (the
infra's ``dask`` subnet has the control plane's NAT gateway): one that says ``defaultOutboundAccess: false``
and has no NAT gateway is refused before any VM is created.

**Least privilege on an existing VNet.** Only the subnet is read (``subnets/read`` on the subnet), never
its VNet: RBAC is inherited downwards only, and the Bicep grants the Function App roles at the ``dask``
subnet's scope, not the VNet's (infra/modules/roles-controlplane.bicep).

The seed opened Dask's ports 8786/8787 to ``Internet``. Here they are admitted from the experiment's
own subnet only (plus ``NetworkSpec.allowed_source_prefixes``) and denied to the rest, VNet included:
nothing outside the cluster talks to Dask (the control plane meets the cluster in storage). Other
VM-to-VM traffic inside the subnet (workers' ports) rides on Azure's default ``AllowVnetInBound``.

The names, tags and rules are :mod:`shared.backends.vmcluster.network_layout`'s (pure; the dry run reads them too).
Retries are :func:`shared.backends.arm.arm_call`'s (409/429/5xx, with ``Retry-After``); see there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from shared.backends.arm import DEFAULT_RETRY, RetrySettings, arm_call, is_not_found, make_arm_client
from shared.backends.vmcluster.handle import NetworkHandle
from shared.backends.vmcluster.network_layout import (
    CREATED_BY,
    CREATED_BY_TAG,
    DASK_RULE_PREFIX,
    EXPERIMENT_TAG,
    INSTANCE_TAG,
    NetworkNames,
    dask_rules,
    network_names,
    rule_shape,
)
from shared.backends.vmcluster.section import NetworkSpec
from shared.errors import BackendError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.mgmt.network import NetworkManagementClient
    from azure.mgmt.network.models import NetworkSecurityGroup, SecurityRule, VirtualNetwork

log = logging.getLogger(__name__)
R = TypeVar("R")
"""An ARM resource model (the body of a PUT and its answer)."""


def make_network_client(
    subscription_id: str,
    credential: TokenCredential | None = None,
    base_url: str | None = None,
    *,
    polling_interval: float | None = None,
) -> NetworkManagementClient:
    """A ``NetworkManagementClient`` (see :func:`shared.backends.arm.make_arm_client`)."""
    from azure.mgmt.network import NetworkManagementClient

    return make_arm_client(
        NetworkManagementClient, subscription_id, credential, base_url, polling_interval=polling_interval
    )


def ensure_network(
    client: NetworkManagementClient,
    *,
    resource_group: str,
    location: str,
    experiment_id: str,
    spec: NetworkSpec,
    tags: dict[str, str] | None = None,
    retry: RetrySettings = DEFAULT_RETRY,
) -> NetworkHandle:
    """Create or reuse the NSG, then the VNet and subnet, for one experiment; idempotent.

    ``existing_*`` name resources by ARM id (any resource group) or by name (in ``resource_group``);
    an existing VNet's subnet is chosen by name (``existing_subnet``), never a delegated one. Our NSG
    admits Dask's ports from the experiment's subnet (and ``allowed_source_prefixes``) and denies
    them to the rest of the VNet.
    """
    if spec.existing_subnet and not spec.existing_vnet:
        raise BackendError("network.existing_subnet needs network.existing_vnet (the VNet it belongs to)")
    if spec.existing_vnet and not spec.existing_subnet:
        raise BackendError("network.existing_vnet needs network.existing_subnet: the subnet is chosen by name")
    names = network_names(experiment_id)
    all_tags = {**(tags or {}), EXPERIMENT_TAG: experiment_id, CREATED_BY_TAG: CREATED_BY}
    ctx = _Context(client, resource_group, location, experiment_id, all_tags, retry)
    created: list[str] = []

    existing = None
    subnet_prefixes = [spec.subnet_prefix]
    if spec.existing_vnet:
        existing = _existing_subnet(ctx, spec.existing_vnet, spec.existing_subnet or "")
        subnet_prefixes = existing.prefixes

    if spec.existing_security_group:
        nsg = ctx.get_existing("network security group", spec.existing_security_group)
    else:
        nsg = _ensure_nsg(ctx, names.nsg, dask_rules(spec.allowed_source_prefixes, subnet_prefixes))
        created.append(str(nsg.id))

    if existing is None:
        nat_ip, nat = _ensure_nat_gateway(ctx, names)
        created += [str(nat_ip.id), str(nat.id)]
        vnet = _ensure_vnet(ctx, names, spec, nsg.id, nat.id)
        created.append(str(vnet.id))
        existing = _Subnet(
            str(vnet.name), str(vnet.id), names.subnet, _subnet_id(vnet, names.subnet), [spec.subnet_prefix]
        )

    return NetworkHandle(
        resource_group=resource_group,
        location=location,
        experiment_id=experiment_id,
        vnet_name=existing.vnet_name,
        vnet_id=existing.vnet_id,
        subnet_name=existing.name,
        subnet_id=existing.id,
        nsg_name=nsg.name,
        nsg_id=nsg.id,
        created=created,
    )


def teardown_network(
    client: NetworkManagementClient,
    *,
    resource_group: str,
    handle: NetworkHandle,
    retry: RetrySettings = DEFAULT_RETRY,
) -> list[str]:
    """Delete what ``handle.created`` lists (VNet, NAT gateway, public IP, NSG); returns the ids deleted now.

    A resource already gone (404) counts as success and is not in the result.
    """
    return delete_network_resources(client, resource_group=resource_group, resource_ids=handle.created, retry=retry)


def delete_network_resources(
    client: NetworkManagementClient,
    *,
    resource_group: str,
    resource_ids: Iterable[str],
    retry: RetrySettings = DEFAULT_RETRY,
) -> list[str]:
    """Delete VNets, NAT gateways, their public IPs and NSGs by ARM id in dependency order (the timer
    sweep feeds it orphans)."""
    from azure.mgmt.core.tools import parse_resource_id

    ordered: list[tuple[int, str, str, str]] = []
    for rid in dict.fromkeys(resource_ids):
        parts: Mapping[str, Any] = parse_resource_id(rid)
        kind = (parts.get("namespace", "") + "/" + parts.get("type", "")).lower()
        if kind not in _DELETE_ORDER or parts.get("children"):
            raise BackendError(f"refusing to delete {rid!r}: not a network resource an experiment creates")
        if parts.get("resource_group", "").lower() != resource_group.lower():
            raise BackendError(f"refusing to delete {rid!r}: not in resource group {resource_group!r}")
        ordered.append((_DELETE_ORDER[kind], rid, kind, parts["name"]))

    deleted: list[str] = []
    for _, rid, kind, name in sorted(ordered, key=lambda item: item[0]):
        label = _LABELS[kind]
        ops = _operations(client, label)

        def _delete(ops: Any = ops, name: str = name) -> bool:
            try:
                ops.begin_delete(resource_group, name).result()
            except Exception as exc:
                if is_not_found(exc):
                    return False
                raise
            return True

        if arm_call(f"deleting {label} {name}", _delete, retry):
            log.info("deleted %s %s", label, rid)
            deleted.append(rid)
        else:
            log.info("%s %s was already gone", label, rid)
    return deleted


def find_orphaned_networks(
    client: NetworkManagementClient,
    *,
    resource_group: str,
    live_experiment_ids: set[str],
    instance_id: str,
    retry: RetrySettings = DEFAULT_RETRY,
) -> list[str]:
    """ARM ids of this control plane's VNets, NAT gateways, public IPs and NSGs (tagged
    ``rapids-hpo-instance=<instance_id>``) in ``resource_group`` whose experiment is not live (VNets first)."""
    found: list[str] = []
    for label, ops in (
        ("virtual networks", client.virtual_networks),
        ("NAT gateways", client.nat_gateways),
        ("public IP addresses", client.public_ip_addresses),
        ("network security groups", client.network_security_groups),
    ):
        resources = arm_call(
            f"listing {label} in resource group {resource_group}",
            lambda ops=ops: list(ops.list(resource_group)),  # type: ignore[misc]
            retry,
        )
        for resource in resources:
            resource_tags = resource.tags or {}
            if resource_tags.get(CREATED_BY_TAG) != CREATED_BY or resource_tags.get(INSTANCE_TAG) != instance_id:
                continue
            if resource_tags.get(EXPERIMENT_TAG) not in live_experiment_ids:
                found.append(resource.id)
    return found


# --- internals ----------------------------------------------------------------------------------

_DELETE_ORDER = {
    "microsoft.network/virtualnetworks": 0,
    "microsoft.network/natgateways": 1,
    "microsoft.network/publicipaddresses": 2,
    "microsoft.network/networksecuritygroups": 3,
}
_LABELS = {
    "microsoft.network/virtualnetworks": "virtual network",
    "microsoft.network/natgateways": "NAT gateway",
    "microsoft.network/publicipaddresses": "public IP address",
    "microsoft.network/networksecuritygroups": "network security group",
}


def _operations(client: NetworkManagementClient, label: str) -> Any:
    return {
        "virtual network": client.virtual_networks,
        "NAT gateway": client.nat_gateways,
        "public IP address": client.public_ip_addresses,
        "network security group": client.network_security_groups,
    }[label]


@dataclass(frozen=True)
class _Subnet:
    vnet_name: str
    vnet_id: str
    name: str
    id: str
    prefixes: list[str]


@dataclass(frozen=True)
class _Context:
    client: NetworkManagementClient
    resource_group: str
    location: str
    experiment_id: str
    tags: dict[str, str]
    retry: RetrySettings

    def ops(self, label: str) -> Any:
        return _operations(self.client, label)

    def get(self, label: str, name: str, resource_group: str | None = None) -> Any | None:
        """GET a resource; None when it does not exist."""
        ops = self.ops(label)
        group = resource_group or self.resource_group
        return _get_or_none(f"reading {label} {name}", lambda: ops.get(group, name), self.retry)

    def get_existing(self, label: str, reference: str) -> Any:
        """GET a resource the spec names (an ARM id, or a name in our resource group); it must exist,
        in our region."""
        group, name = self.resource_group, reference
        if reference.lower().startswith("/subscriptions/"):
            from azure.mgmt.core.tools import parse_resource_id

            parts = parse_resource_id(reference)
            group, name = str(parts.get("resource_group") or ""), str(parts.get("name") or "")
            if not group or not name or parts.get("children"):
                raise BackendError(f"{label} {reference!r} is not the resource id of a {label}")
        resource = self.get(label, name, group)
        if resource is None:
            raise BackendError(
                f"{label} {name!r} (named in the spec's network section) does not exist in resource group {group!r}"
            )
        self.check_location(label, resource)
        return resource

    def check_location(self, label: str, resource: Any) -> None:
        if _norm_location(resource.location or "") != _norm_location(self.location):
            raise BackendError(
                f"{label} {resource.name!r} is in {resource.location!r}, but the cluster runs in "
                f"{self.location!r}; VMs can only join a network in their own region"
            )

    def check_owned(self, label: str, resource: Any, spec_field: str) -> None:
        owner = (resource.tags or {}).get(EXPERIMENT_TAG)
        if owner != self.experiment_id:
            who = f"experiment {owner!r}" if owner else "no rapids-hpo experiment"
            raise BackendError(
                f"{label} {resource.name!r} already exists in resource group {self.resource_group!r} "
                f"and belongs to {who}, not {self.experiment_id!r}; refusing to modify it "
                f"(to use it deliberately, set network.{spec_field})"
            )
        self.check_location(label, resource)

    def put(self, label: str, name: str, body: R, verb: str) -> R:
        """PUT ``body`` and wait; ARM answers the resource as stored, a model of the body's type."""
        ops = self.ops(label)
        return arm_call(
            f"{verb} {label} {name}",
            lambda: cast(R, ops.begin_create_or_update(self.resource_group, name, body).result()),
            self.retry,
        )


def _get_or_none(action: str, get: Any, retry: RetrySettings) -> Any | None:
    """One ARM GET through :func:`arm_call`; None when the resource does not exist (404)."""

    def _get() -> Any | None:
        try:
            return get()
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise

    return arm_call(action, _get, retry)


def _norm_location(location: str) -> str:
    return location.replace(" ", "").lower()


def _has_tags(resource: Any, tags: dict[str, str]) -> bool:
    current = resource.tags or {}
    return all(current.get(k) == v for k, v in tags.items())


def _ensure_nsg(ctx: _Context, name: str, rules: list[SecurityRule]) -> NetworkSecurityGroup:
    from azure.mgmt.network.models import NetworkSecurityGroup

    label = "network security group"
    existing: NetworkSecurityGroup | None = ctx.get(label, name)
    if existing is None:
        body: NetworkSecurityGroup = NetworkSecurityGroup(location=ctx.location, tags=ctx.tags, security_rules=rules)
        log.info("creating %s %s", label, name)
        return ctx.put(label, name, body, "creating")

    ctx.check_owned(label, existing, "existing_security_group")
    current = existing.security_rules or []
    ours = sorted((r for r in current if (r.name or "").startswith(DASK_RULE_PREFIX)), key=lambda r: r.name)
    if [rule_shape(r) for r in ours] == [rule_shape(r) for r in rules] and _has_tags(existing, ctx.tags):
        log.info("reusing %s %s", label, name)
        return existing
    others = [r for r in current if not (r.name or "").startswith(DASK_RULE_PREFIX)]
    body = NetworkSecurityGroup(
        location=existing.location,
        tags={**(existing.tags or {}), **ctx.tags},
        security_rules=[*others, *rules],
    )
    log.info("reconciling %s %s (Dask rule or tags differ)", label, name)
    return ctx.put(label, name, body, "updating")


def _subnet_prefixes(subnet: Any) -> set[str]:
    return {*(subnet.address_prefixes or []), *([subnet.address_prefix] if subnet.address_prefix else [])}


def _ensure_owned(ctx: _Context, label: str, name: str, body: Any) -> Any:
    """Create a resource, or reuse the one this experiment created before (refusing anyone else's)."""
    existing = ctx.get(label, name)
    if existing is not None:
        ctx.check_owned(label, existing, "existing_vnet")
        log.info("reusing %s %s", label, name)
        return existing
    log.info("creating %s %s", label, name)
    return ctx.put(label, name, body, "creating")


def _ensure_nat_gateway(ctx: _Context, names: NetworkNames) -> tuple[Any, Any]:
    """The experiment's way out: a Standard static public IP and a NAT gateway using it."""
    from azure.mgmt.network.models import NatGateway, NatGatewaySku, PublicIPAddress, PublicIPAddressSku, SubResource

    nat_ip = _ensure_owned(
        ctx,
        "public IP address",
        names.nat_ip,
        PublicIPAddress(
            location=ctx.location,
            tags=ctx.tags,
            sku=PublicIPAddressSku(name="Standard"),
            public_ip_allocation_method="Static",
            public_ip_address_version="IPv4",
        ),
    )
    nat = _ensure_owned(
        ctx,
        "NAT gateway",
        names.nat,
        NatGateway(
            location=ctx.location,
            tags=ctx.tags,
            sku=NatGatewaySku(name="Standard"),
            idle_timeout_in_minutes=10,
            public_ip_addresses=[SubResource(id=nat_ip.id)],
        ),
    )
    return nat_ip, nat


def _ensure_vnet(ctx: _Context, names: NetworkNames, spec: NetworkSpec, nsg_id: str, nat_id: str) -> VirtualNetwork:
    from azure.mgmt.network.models import AddressSpace, NetworkSecurityGroup, Subnet, SubResource, VirtualNetwork

    label = "virtual network"
    desired_subnet = Subnet(
        name=names.subnet,
        address_prefix=spec.subnet_prefix,
        network_security_group=NetworkSecurityGroup(id=nsg_id),
        nat_gateway=SubResource(id=nat_id),
        default_outbound_access=False,
    )
    existing: VirtualNetwork | None = ctx.get(label, names.vnet)
    if existing is None:
        body: VirtualNetwork = VirtualNetwork(
            location=ctx.location,
            tags=ctx.tags,
            address_space=AddressSpace(address_prefixes=[spec.vnet_address_space]),
            subnets=[desired_subnet],
        )
        log.info("creating %s %s", label, names.vnet)
        return ctx.put(label, names.vnet, body, "creating")

    ctx.check_owned(label, existing, "existing_vnet")
    subnets = existing.subnets or []
    ours = next((s for s in subnets if (s.name or "").lower() == names.subnet.lower()), None)
    space = set((existing.address_space.address_prefixes if existing.address_space else None) or [])
    same = (
        space == {spec.vnet_address_space}
        and ours is not None
        and _subnet_prefixes(ours) == {spec.subnet_prefix}
        and ours.network_security_group is not None
        and (ours.network_security_group.id or "").lower() == nsg_id.lower()
        and ours.nat_gateway is not None
        and (ours.nat_gateway.id or "").lower() == nat_id.lower()
        and _has_tags(existing, ctx.tags)
    )
    if same:
        log.info("reusing %s %s", label, names.vnet)
        return existing
    others = [s for s in subnets if (s.name or "").lower() != names.subnet.lower()]
    body = VirtualNetwork(
        location=existing.location,
        tags={**(existing.tags or {}), **ctx.tags},
        address_space=AddressSpace(address_prefixes=[spec.vnet_address_space]),
        subnets=[*others, desired_subnet],
    )
    log.info("reconciling %s %s (address space, subnet or tags differ)", label, names.vnet)
    return ctx.put(label, names.vnet, body, "updating")


def _subnet_id(vnet: Any, subnet_name: str) -> str:
    for subnet in vnet.subnets or []:
        if (subnet.name or "").lower() == subnet_name.lower() and subnet.id:
            return str(subnet.id)
    return f"{vnet.id}/subnets/{subnet_name}"


def _existing_subnet(ctx: _Context, vnet_reference: str, wanted: str) -> _Subnet:
    """The subnet ``wanted`` of the VNet the spec names, read by itself (``subnets/read`` on the subnet is
    all it takes: its VNet is never read). Refused: a subnet delegated to a service (a Function App's
    ``Microsoft.App/environments`` subnet takes no NICs), and one with no way out (no NAT gateway and
    default outbound access off: the VMs could pull no image and reach no Storage)."""
    from azure.mgmt.core.tools import parse_resource_id

    group, vnet_name = ctx.resource_group, vnet_reference
    if vnet_reference.lower().startswith("/subscriptions/"):
        parts = parse_resource_id(vnet_reference)
        group, vnet_name = str(parts.get("resource_group") or ""), str(parts.get("name") or "")
        if not group or not vnet_name or parts.get("children"):
            raise BackendError(f"virtual network {vnet_reference!r} is not the resource id of a virtual network")

    action = f"reading subnet {wanted} of virtual network {vnet_name}"
    subnet = _get_or_none(action, lambda: ctx.client.subnets.get(group, vnet_name, wanted), ctx.retry)
    if subnet is None:
        raise BackendError(
            f"subnet {wanted!r} (network.existing_subnet) does not exist in virtual network {vnet_name!r} "
            f"of resource group {group!r}"
        )
    delegations = [d.service_name for d in (subnet.delegations or []) if d.service_name]
    if delegations:
        raise BackendError(
            f"subnet {subnet.name!r} of virtual network {vnet_name!r} is delegated to "
            f"{', '.join(delegations)}: VMs cannot join it; name another network.existing_subnet"
        )
    if subnet.nat_gateway is None and subnet.default_outbound_access is False:
        raise BackendError(
            f"subnet {subnet.name!r} of virtual network {vnet_name!r} has no way out (no NAT gateway, default "
            "outbound access off): its VMs could pull no image and reach no Storage; attach a NAT gateway "
            "(infra: enableNatGateway) or leave network.existing_vnet unset (the experiment gets its own)"
        )
    subnet_id = str(subnet.id)
    return _Subnet(
        vnet_name, subnet_id.rsplit("/subnets/", 1)[0], str(subnet.name), subnet_id, sorted(_subnet_prefixes(subnet))
    )
