"""What an experiment's network is called, how it is tagged and what its NSG admits (no Azure call).

:mod:`shared.backends.vmcluster.network` creates and deletes the resources; the dry run (``rapids-hpo plan``), the
cluster's tags and the orphan sweep read the same names, tags and rules from here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.mgmt.network.models import SecurityRule

EXPERIMENT_TAG = "rapids-hpo-experiment"
CREATED_BY_TAG = "created-by"
CREATED_BY = "rapids-hpo-control"
INSTANCE_TAG = "rapids-hpo-instance"
"""Which control plane made a resource (``RAPIDS_HPO_INSTANCE_ID``): the orphan sweep touches only its own."""

DASK_PORTS = ("8786", "8787")
DASK_RULE_PREFIX = "rapids-hpo-dask"
DASK_RULE_PRIORITY = 1000
DASK_DENY_PRIORITY = 1100

_MAX_NAME = 64
_INVALID = re.compile(r"[^a-z0-9_.-]+")


@dataclass(frozen=True)
class NetworkNames:
    """Names of the resources an experiment creates (valid Azure names, at most 64 characters)."""

    vnet: str
    subnet: str
    nsg: str
    nat: str
    """The NAT gateway of the experiment's subnet: its way out (subnets are private by default)."""
    nat_ip: str
    """The NAT gateway's public IP (Standard, static)."""


def network_names(experiment_id: str) -> NetworkNames:
    """Derive the VNet, subnet and NSG names from an experiment id.

    Lower-cased, invalid characters replaced by ``-``; a hash of the id is appended whenever
    that or truncation changed it, so distinct ids never share names.
    """
    if not experiment_id or not experiment_id.strip():
        raise ValueError("experiment_id must not be empty")
    slug = _INVALID.sub("-", experiment_id.strip().lower())
    slug = re.sub(r"-{2,}", "-", slug).strip("-._")
    budget = _MAX_NAME - len("pip-ng-")
    if slug != experiment_id or len(slug) > budget or not slug:
        digest = hashlib.sha256(experiment_id.encode()).hexdigest()[:8]
        slug = f"{slug[: budget - len(digest) - 1].rstrip('-._')}-{digest}".lstrip("-")
    return NetworkNames(
        vnet=f"vnet-{slug}", subnet=f"snet-{slug}", nsg=f"nsg-{slug}", nat=f"ng-{slug}", nat_ip=f"pip-ng-{slug}"
    )


def dask_rules(allowed: list[str], subnet_prefixes: list[str]) -> list[SecurityRule]:
    """Inbound TCP 8786-8787 from the experiment's subnet (and the named prefixes), then a deny of
    those ports to everyone else: Azure's default ``AllowVnetInBound`` would admit the whole VNet.

    Every source is an address block (the spec refuses service tags: ``NetworkSpec``), so one rule holds them.
    """
    from azure.mgmt.network.models import SecurityRule

    sources = list(dict.fromkeys([*subnet_prefixes, *allowed]))
    groups: list[list[str]] = [sources] if sources else []
    rules = []
    for i, group in enumerate(groups):
        source: dict[str, Any] = (
            {"source_address_prefix": group[0]} if len(group) == 1 else {"source_address_prefixes": group}
        )
        rules.append(
            SecurityRule(
                name=f"{DASK_RULE_PREFIX}-{i}",
                description="Dask scheduler and dashboard (8786, 8787) from the cluster's subnet, rapids-hpo-control",
                direction="Inbound",
                access="Allow",
                protocol="Tcp",
                priority=DASK_RULE_PRIORITY + i,
                source_port_range="*",
                destination_address_prefix="*",
                destination_port_ranges=list(DASK_PORTS),
                **source,
            )
        )
    rules.append(
        SecurityRule(
            name=f"{DASK_RULE_PREFIX}-deny",
            description="Dask's ports from anywhere else (the rest of the VNet included), rapids-hpo-control",
            direction="Inbound",
            access="Deny",
            protocol="Tcp",
            priority=DASK_DENY_PRIORITY,
            source_port_range="*",
            source_address_prefix="*",
            destination_address_prefix="*",
            destination_port_ranges=list(DASK_PORTS),
        )
    )
    return rules


def rule_shape(rule: SecurityRule) -> tuple[Any, ...]:
    """The fields of a rule we manage, normalized (ARM may echo single/list forms either way)."""

    def _set(single: str | None, many: list[str] | None) -> tuple[str, ...]:
        return tuple(sorted({*(many or []), *([single] if single else [])}))

    return (
        rule.name,
        (rule.direction or "").lower(),
        (rule.access or "").lower(),
        (rule.protocol or "").lower(),
        rule.priority,
        _set(rule.source_address_prefix, rule.source_address_prefixes),
        _set(rule.source_port_range, rule.source_port_ranges),
        _set(rule.destination_address_prefix, rule.destination_address_prefixes),
        _set(rule.destination_port_range, rule.destination_port_ranges),
    )
