"""Price a spec before it runs: the node-hours its backend's billing profile gives x the catalogue's prices.

The run's wall time is a range: at best every trial after the first wave is stopped by the early-termination
policy at the first fold it evaluates; at worst every trial runs to ``trial_timeout`` (both capped by
``limits.timeout``). A run with several objectives then refits up to ``output.front_models - 1`` other Pareto
front members one after another (:func:`front_refits`), after the search and so outside ``limits.timeout``:
the top of the range counts each as one trial's time (a refit is one fit on all rows, a trial ``cv_folds``
fits on most of them), the bottom none (the front may be the best alone). The backend's
:class:`~shared.cost.billing.BillingProfile` turns a wall time into node-hours (start-up and idle tail
included); the price per node-hour weighs the sizes of the nodes it bills
(workers and a scheduler VM may differ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shared.cost.billing import BillingProfile, billing_profile
from shared.cost.catalogue import Catalogue, Tier
from shared.spec.search_table import first_stop_fraction

if TYPE_CHECKING:
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


@dataclass(frozen=True)
class RunTimes:
    low_s: float
    high_s: float
    per_trial_s: float
    per_trial_basis: str
    low_basis: str
    front_refits: int = 0
    """Refits of other Pareto front members counted in ``high_s`` (0 with one objective)."""


def front_refits(spec: ExperimentSpec) -> int:
    """The most front member refits a run of ``spec`` starts after the best's: ``output.front_models - 1``
    with several objectives (a front holds at most every trial), none with one."""
    if not spec.objective.multi:
        return 0
    return max(min(spec.output.front_models, spec.effective_total_trials()) - 1, 0)


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
    refits = front_refits(spec)
    return RunTimes(low, high + refits * per_trial, per_trial, basis, low_basis, refits)


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
    spec: ExperimentSpec, catalogue: Catalogue, *, vm_size: str | None = None, tier: Tier | None = None
) -> CostEstimate:
    """The spec's cost range, or that of the same run on ``vm_size``/``tier``."""
    return price_profile(spec, billing_profile(spec, vm_size, tier), catalogue)


def price_profile(spec: ExperimentSpec, profile: BillingProfile, catalogue: Catalogue) -> CostEstimate:
    """The cost range of a run of ``spec`` that bills as ``profile``."""
    times = run_time_range(spec)
    low_hours, high_hours = profile.node_hours(times.low_s), profile.node_hours(times.high_s)
    prices = profile.prices(catalogue)
    unpriced, weighted = [], 0.0
    for group, price in zip(profile.groups, prices, strict=True):
        if price is None:
            unpriced.append(f"{group.role}: {group.vm_size or 'no Azure size named'} ({group.tier.value})")
            continue
        weighted += price.usd_per_hour * group.count
    main = profile.trial_nodes
    if unpriced or not profile.nodes:
        return CostEstimate(main.vm_size, main.tier, low_hours, high_hours, None, None, None, "unpriced", unpriced)
    per_node = weighted / profile.nodes
    basis = profile.basis(prices)
    return CostEstimate(
        main.vm_size, main.tier, low_hours, high_hours, per_node, low_hours * per_node, high_hours * per_node, basis
    )


def candidate_estimates(spec: ExperimentSpec, catalogue: Catalogue) -> list[CostEstimate]:
    """The same run on the spec's size and the candidate sizes, pay-as-you-go and the backend's cheap tier.

    Trial times are assumed equal on every size (a faster GPU finishes sooner: the figures are an upper
    bound for the faster sizes)."""
    profile = billing_profile(spec)
    own = profile.trial_nodes.vm_size
    candidates = [size for size in CANDIDATE_SIZES if spec.compute.size_problem(size) is None]
    sizes = list(dict.fromkeys([*([own] if own else []), *candidates]))
    rows = []
    for size in sizes:
        for tier in (Tier.PAYG, profile.cheap_tier):
            rows.append(estimate_cost(spec, catalogue, vm_size=size, tier=tier))
    return rows


def size_warnings(spec: ExperimentSpec, catalogue: Catalogue) -> list[str]:
    """Warnings for sizes the catalogue does not know (allowed, unpriced)."""
    names = {group.vm_size for group in billing_profile(spec).groups if group.vm_size}
    return [w for name in sorted(names) if (w := catalogue.check(name).warning)]


def idle_gpu_warnings(spec: ExperimentSpec) -> list[str]:
    """A warning when ``limits.max_concurrent_trials`` leaves GPUs the run pays for idle."""
    capacity = spec.compute.gpu_capacity()
    concurrency = spec.limits.max_concurrent_trials
    if capacity is None or concurrency >= min(capacity.trials_at_once, spec.effective_total_trials()):
        return []
    return [
        f"max_concurrent_trials {concurrency} leaves GPUs idle: the compute runs {capacity.trials_at_once} "
        f"trials at once ({capacity.detail}); leave it out for that default or raise it"
    ]


def spec_warnings(spec: ExperimentSpec, catalogue: Catalogue) -> list[str]:
    """What the plan and the submit warn about: unknown sizes, and GPUs the concurrency leaves idle."""
    return size_warnings(spec, catalogue) + idle_gpu_warnings(spec)


def budget_error(spec: ExperimentSpec, catalogue: Catalogue) -> str | None:
    """Why ``limits.max_cost`` cannot be enforced for this spec (no price for a billed node), or None."""
    if getattr(spec.limits, "max_cost", None) is None:
        return None
    profile = billing_profile(spec)
    estimate = price_profile(spec, profile, catalogue)
    if estimate.priced:
        return None
    hint = f" ({profile.unpriced_hint})" if profile.unpriced_hint else ""
    return f"a budget needs a price for every billed node; none for {'; '.join(estimate.unpriced)}{hint}"
