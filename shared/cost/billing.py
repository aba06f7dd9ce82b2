"""What a run bills, as its backend declares it: the one input of the estimate, the ledger and the plan.

Each backend's compute section (``shared.compute_spec``) returns from ``billing(spec)`` a
:class:`BillingProfile`: the node groups the run bills (the first one runs the trials), whether they bill
for the whole run or come and go with the trials, what is billed beyond the trials (start-up, the idle tail
before scale-down), the cheap tier it can buy, and whether anything is billed at all (a local run is
priced as the Azure size it stands for). Nothing in ``shared.cost`` asks which backend a spec names.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from shared.cost.catalogue import Tier

__all__ = ["BillingModel", "BillingProfile", "NodeGroup", "Tier", "billing_profile", "spec_tier"]

if TYPE_CHECKING:
    from collections.abc import Iterable

    from shared.cost.catalogue import Catalogue, Price
    from shared.spec import ExperimentSpec


class BillingModel(StrEnum):
    FLEET = "fleet"
    """Every node bills from the run's start to its teardown (VMs created for the run); time no trial
    uses is idle."""
    AUTOSCALE = "autoscale"
    """Trial nodes exist while trials hold them (an autoscaling cluster), then each waits
    ``idle_tail_s`` before it scales down; ``always_on`` nodes bill for the whole run."""


@dataclass(frozen=True)
class NodeGroup:
    """Nodes a backend bills for a run: ``count`` VMs of ``vm_size`` (None: no Azure size named)."""

    role: str
    vm_size: str | None
    count: int
    tier: Tier = Tier.PAYG


@dataclass(frozen=True)
class BillingProfile:
    """How a run of one spec bills (see the module's docstring)."""

    groups: tuple[NodeGroup, ...]
    """``groups[0]`` runs the trials (the size and tier the plan's comparison table varies); the others
    (a scheduler VM) bill beside it."""
    model: BillingModel = BillingModel.FLEET
    region: str | None = None
    """Where prices are looked up (None: the catalogue's reference region)."""
    startup_s: float = 0.0
    """Billed before the first trial can start (VMs boot and pull the image); estimates add it."""
    idle_tail_s: float = 0.0
    """``AUTOSCALE``: each trial node waits this long after its last trial before it scales down."""
    always_on: int = 0
    """``AUTOSCALE``: trial nodes kept for the whole run (AmlCompute ``min_instances``)."""
    trial_per_gpu: bool = False
    """A trial node runs one trial per GPU at once (a Dask worker per GPU); else one trial per node."""
    cheap_tier: Tier = Tier.SPOT
    """The discounted tier this backend can buy (Spot VMs, or AzureML low priority)."""
    billed: bool = True
    """False: the backend bills nothing itself; the groups price the Azure size the run stands for, and
    every figure is an estimate."""
    unpriced_hint: str = ""
    """How the user gets a price when a group has none (e.g. which spec field names the size)."""

    @property
    def trial_nodes(self) -> NodeGroup:
        return self.groups[0]

    @property
    def nodes(self) -> int:
        return sum(group.count for group in self.groups)

    def node_hours(self, elapsed_s: float, *, overheads: bool = True) -> float:
        """Node-hours a run of ``elapsed_s`` bills, every node counted for the whole time; with
        ``overheads`` (an estimate before the run) plus the start-up and the trial nodes' idle tail."""
        seconds = max(elapsed_s, 0.0) + (self.startup_s if overheads else 0.0)
        hours = self.nodes * seconds / 3600.0
        if overheads and self.model is BillingModel.AUTOSCALE:
            hours += self.trial_nodes.count * self.idle_tail_s / 3600.0
        return hours

    def prices(self, catalogue: Catalogue) -> list[Price | None]:
        """Each group's price in the catalogue, in order (None: no size named, or the catalogue has none)."""
        return [catalogue.price(g.vm_size, self.region, g.tier) if g.vm_size else None for g in self.groups]

    def basis(self, prices: Iterable[Price | None]) -> str:
        """The bases of ``prices`` as people read them, once each; labelled an estimate when nothing is billed."""
        joined = "; ".join(dict.fromkeys(price.basis for price in prices if price))
        if self.billed:
            return joined
        return f"estimate: {self.trial_nodes.role} priced as {self.trial_nodes.vm_size}, {joined}"

    def overheads(self) -> list[str]:
        """What node-hour estimates include beyond the trials, in words (for the plan)."""
        words = []
        if self.startup_s:
            words.append("VM start-up")
        if self.model is BillingModel.AUTOSCALE and self.idle_tail_s:
            words.append("idle scale-down")
        return words


def spec_tier(spec: ExperimentSpec) -> Tier:
    """The tier the spec buys its trial nodes in (``compute.low_priority``, ``compute.spot``, else PAYG)."""
    compute = spec.compute
    if getattr(compute, "low_priority", False):
        return Tier.LOW_PRIORITY
    if getattr(compute, "spot", False):
        return Tier.SPOT
    return Tier.PAYG


def billing_profile(spec: ExperimentSpec, vm_size: str | None = None, tier: Tier | None = None) -> BillingProfile:
    """The spec's billing profile, as its compute section declares it; ``vm_size``/``tier`` replace the
    trial nodes' (the plan's comparison table)."""
    return spec.compute.billing(spec, vm_size, tier)
