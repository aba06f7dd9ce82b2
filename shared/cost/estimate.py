"""Price a spec before it runs: node-hours (from the backend's rule) x the catalogue's hourly prices.

The run's wall time is a range: at best every trial after the first wave is stopped by the early-termination
policy at the first fold it evaluates; at worst every trial runs to ``trial_timeout`` (both capped by
``limits.timeout``). The backend turns a wall time into node-hours (``Planner.node_hours``); the price per
node-hour weighs the sizes of the nodes the backend bills (workers and a scheduler VM may differ).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shared.cost.catalogue import Catalogue, Tier

if TYPE_CHECKING:
    from shared.ports import Planner
    from shared.spec import ExperimentSpec

DEFAULT_TRIAL_SECONDS = 1800
"""Per-trial time assumed when the spec sets neither ``trial_timeout`` nor ``timeout``."""
CANDIDATE_SIZES = (
    "Standard_NC4as_T4_v3",
    "Standard_NC8as_T4_v3",
    "Standard_NV36ads_A10_v5",
    "Standard_NC24ads_A100_v4",
    "Standard_NC40ads_H100_v5",
)
"""One-GPU sizes of each current family, the plan's comparison table (the spec's own size is added)."""

NodeHours = Callable[["ExperimentSpec", float], float]
"""A backend's rule: node-hours a run of the spec bills in a wall time of so many seconds."""


@dataclass(frozen=True)
class NodeGroup:
    """Nodes a backend bills for a run: ``count`` VMs of ``vm_size`` (None: no Azure size named)."""

    role: str
    vm_size: str | None
    count: int
    tier: Tier = Tier.PAYG


def spec_tier(spec: ExperimentSpec) -> Tier:
    compute = spec.compute
    if getattr(compute, "low_priority", False):
        return Tier.LOW_PRIORITY
    if getattr(compute, "spot", False):
        return Tier.SPOT
    return Tier.PAYG


def spec_region(spec: ExperimentSpec) -> str | None:
    """The region prices are looked up in (vmcluster's ``location``; AzureML's is its workspace's)."""
    return getattr(spec.compute, "location", None)


def billed_nodes(spec: ExperimentSpec, vm_size: str | None = None, tier: Tier | None = None) -> list[NodeGroup]:
    """What a run bills, by role; ``vm_size``/``tier`` replace the GPU nodes' (the comparison table)."""
    compute = spec.compute
    tier = tier or spec_tier(spec)
    if compute.backend == "vmcluster":
        workers = vm_size or compute.vm_size
        scheduler = compute.scheduler_vm_size or workers
        # compute.spot makes the workers Spot VMs; the scheduler (head) stays on demand
        return [NodeGroup("workers", workers, compute.n_workers, tier), NodeGroup("scheduler", scheduler, 1)]
    if compute.backend == "azureml":
        nodes = min(spec.limits.max_concurrent_trials, spec.effective_total_trials(), compute.max_instances)
        return [NodeGroup("trial nodes", vm_size or compute.vm_size, nodes, tier)]
    return [NodeGroup("workers", vm_size or getattr(compute, "equivalent_vm_size", None), compute.n_workers, tier)]


def node_hours_rule(spec: ExperimentSpec, planner: Planner) -> NodeHours:
    """The backend planner's node-hours, plus AzureML's idle tail (each node waits before scaling down)
    and the vmcluster's start-up (its VMs bill while they boot).

    A local run bills nothing; with ``compute.equivalent_vm_size`` its workers are priced as that size for
    the whole run (:func:`default_node_hours`), an estimate."""
    if spec.compute.backend == "local":
        return default_node_hours
    tail = float(getattr(spec.compute, "idle_time_before_scale_down", 0)) if spec.compute.backend == "azureml" else 0
    startup = 0.0
    if spec.compute.backend == "vmcluster":  # the VMs bill while they boot and pull the image
        from shared.backends.vmcluster.settings import CLUSTER_STARTUP_ESTIMATE_S

        startup = float(CLUSTER_STARTUP_ESTIMATE_S)

    def rule(s: ExperimentSpec, elapsed_s: float) -> float:
        return planner.node_hours(s, elapsed_s + startup) + (planner.node_hours(s, tail) if tail else 0.0)

    return rule


def default_node_hours(spec: ExperimentSpec, elapsed_s: float) -> float:
    """Every billed node for the whole wall time, plus AzureML's idle tail (nodes wait before scaling down)."""
    nodes = sum(group.count for group in billed_nodes(spec))
    tail = getattr(spec.compute, "idle_time_before_scale_down", 0) if spec.compute.backend == "azureml" else 0
    return nodes * (max(elapsed_s, 0.0) + tail) / 3600.0


@dataclass(frozen=True)
class RunTimes:
    low_s: float
    high_s: float
    per_trial_s: float
    per_trial_basis: str
    low_basis: str


def first_stop_fraction(spec: ExperimentSpec) -> float:
    """The share of a trial's folds run before the policy can first stop it (1.0 without a policy)."""
    policy = spec.early_termination
    folds = spec.trial.cv_folds
    if policy is None:
        return 1.0
    step = max(policy.delay_evaluation, policy.evaluation_interval)
    step = math.ceil(step / policy.evaluation_interval) * policy.evaluation_interval
    return 1.0 if step >= folds else step / folds


def run_time_range(spec: ExperimentSpec) -> RunTimes:
    limits = spec.limits
    if limits.trial_timeout is not None:
        per_trial, basis = float(limits.trial_timeout), "limits.trial_timeout"
    elif limits.timeout is not None:
        per_trial, basis = float(limits.timeout), "limits.timeout (no trial_timeout)"
    else:
        per_trial, basis = float(DEFAULT_TRIAL_SECONDS), f"an assumed {DEFAULT_TRIAL_SECONDS} s (no time limits set)"
    total, at_once = spec.effective_total_trials(), min(limits.max_concurrent_trials, spec.effective_total_trials())
    waves = math.ceil(total / at_once)
    high = waves * per_trial
    fraction = first_stop_fraction(spec)
    low = per_trial + (waves - 1) * per_trial * fraction
    if fraction < 1.0:
        low_basis = f"the first wave in full, later trials stopped at {fraction:.0%} of their folds"
    else:
        low_basis = "no early stop possible: every trial runs in full"
    if limits.timeout is not None:
        high, low = min(high, float(limits.timeout)), min(low, float(limits.timeout))
    return RunTimes(low, high, per_trial, basis, low_basis)


@dataclass(frozen=True)
class CostEstimate:
    """A priced range. ``usd_*`` are None when some billed node has no price."""

    vm_size: str | None
    tier: Tier
    node_hours_low: float
    node_hours_high: float
    usd_per_hour: float | None
    usd_low: float | None
    usd_high: float | None
    basis: str
    unpriced: list[str] = field(default_factory=list)

    @property
    def priced(self) -> bool:
        return self.usd_per_hour is not None


def estimate_cost(
    spec: ExperimentSpec,
    catalogue: Catalogue,
    node_hours: NodeHours = default_node_hours,
    *,
    vm_size: str | None = None,
    tier: Tier | None = None,
) -> CostEstimate:
    """The spec's cost range, or that of the same run on ``vm_size``/``tier``."""
    groups = billed_nodes(spec, vm_size, tier)
    times = run_time_range(spec)
    low_hours, high_hours = node_hours(spec, times.low_s), node_hours(spec, times.high_s)
    region = spec_region(spec)
    unpriced, weighted, bases = [], 0.0, []
    for group in groups:
        price = catalogue.price(group.vm_size, region, group.tier) if group.vm_size else None
        if price is None:
            unpriced.append(f"{group.role}: {group.vm_size or 'no Azure size named'} ({group.tier.value})")
            continue
        weighted += price.usd_per_hour * group.count
        bases.append(price.basis)
    count = sum(group.count for group in groups)
    main = groups[0]
    if unpriced or not count:
        return CostEstimate(main.vm_size, main.tier, low_hours, high_hours, None, None, None, "unpriced", unpriced)
    per_node = weighted / count
    basis = "; ".join(dict.fromkeys(bases))
    if spec.compute.backend == "local":
        basis = f"estimate: local workers priced as {main.vm_size}, {basis}"
    return CostEstimate(
        main.vm_size, main.tier, low_hours, high_hours, per_node, low_hours * per_node, high_hours * per_node, basis
    )


def candidate_estimates(
    spec: ExperimentSpec, catalogue: Catalogue, node_hours: NodeHours = default_node_hours
) -> list[CostEstimate]:
    """The same run on the spec's size and the candidate sizes, pay-as-you-go and Spot/low priority.

    Trial times are assumed equal on every size (a faster GPU finishes sooner: the figures are an upper
    bound for the faster sizes)."""
    own = billed_nodes(spec)[0].vm_size
    sizes = list(dict.fromkeys([*([own] if own else []), *CANDIDATE_SIZES]))
    cheap = Tier.LOW_PRIORITY if spec.compute.backend == "azureml" else Tier.SPOT
    rows = []
    for size in sizes:
        for tier in (Tier.PAYG, cheap):
            rows.append(estimate_cost(spec, catalogue, node_hours, vm_size=size, tier=tier))
    return rows


def size_warnings(spec: ExperimentSpec, catalogue: Catalogue) -> list[str]:
    """Warnings for sizes the catalogue does not know (allowed, unpriced)."""
    names = {group.vm_size for group in billed_nodes(spec) if group.vm_size}
    return [w for name in sorted(names) if (w := catalogue.check(name).warning)]


def budget_error(spec: ExperimentSpec, catalogue: Catalogue) -> str | None:
    """Why ``limits.max_cost`` cannot be enforced for this spec (no price for a billed node), or None."""
    if getattr(spec.limits, "max_cost", None) is None:
        return None
    estimate = estimate_cost(spec, catalogue)
    if estimate.priced:
        return None
    hint = (
        " (name the Azure size the local workers stand for in compute.equivalent_vm_size)"
        if spec.compute.backend == "local"
        else ""
    )
    return f"a budget needs a price for every billed node; none for {'; '.join(estimate.unpriced)}{hint}"
