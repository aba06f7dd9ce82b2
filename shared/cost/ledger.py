"""The run-time cost ledger: node-seconds x price, per trial, for the head (scheduler) and for idle nodes.

Pure functions of the trial records, the run's start and a clock (tests inject both, and a price table):
the control plane writes the ledger on the experiment at every poll and stops the run when it reaches
``limits.max_cost``; the HPO driver asks :class:`BudgetGuard` before it launches a trial.

Billing models (the backend's :class:`~shared.cost.billing.BillingProfile` says which): a fleet billed for
the whole run (created VMs, or local workers priced as their equivalent Azure size), whose time no trial
uses is *idle*; or autoscaled nodes that exist while trials hold them, whose idle cost is the scale-down
wait after the run's last trial.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from shared.records import CostLedger, TrialRecord, TrialState

if TYPE_CHECKING:
    from shared.cost.catalogue import Catalogue
    from shared.spec import ExperimentSpec

BUDGET_REACHED = "budget reached"
__all__ = ["BUDGET_REACHED", "BudgetGuard", "CostLedger", "Rates", "compute_ledger", "public_cost", "rates_for"]


def public_cost(cost: CostLedger | None) -> dict[str, float | str | None] | None:
    """``ExperimentRecord.cost`` as the API and the events show it: ``{spent_usd, budget_usd, basis}``."""
    return cost.public() if cost is not None else None


@dataclass(frozen=True)
class Rates:
    """USD per second of what a run bills (from the spec and the price catalogue)."""

    slot: float
    """One running trial's share of a node (a node's price / the trials it runs at once)."""
    fleet: float
    """Nodes billed for the whole run (0 when nodes come and go with the trials)."""
    head: float
    node: float
    """One node's price (the idle tail of autoscaled nodes)."""
    tail_s: float
    tail_nodes: int
    fleet_nodes: int
    max_trial_s: float | None
    basis: str


def rates_for(spec: ExperimentSpec, catalogue: Catalogue) -> Rates | None:
    """The run's rates from its billing profile, or None when some billed node has no price (then no
    ledger is kept)."""
    from shared.cost.billing import BillingModel, billing_profile

    profile = billing_profile(spec)
    groups = profile.groups
    prices = profile.prices(catalogue)
    if any(price is None for price in prices):
        return None
    workers, worker_price = groups[0], prices[0]
    assert worker_price is not None
    per_s = worker_price.usd_per_hour / 3600
    size = catalogue.size(workers.vm_size or "")
    per_node_trials = size.gpus if size and profile.trial_per_gpu else 1
    basis = profile.basis(prices)
    head = sum(p.usd_per_hour / 3600 * g.count for g, p in zip(groups[1:], prices[1:], strict=True) if p)
    if profile.model is BillingModel.AUTOSCALE:
        return Rates(per_s / per_node_trials, profile.always_on * per_s, head, per_s, profile.idle_tail_s,
                     workers.count, 0, _max_trial_s(spec), basis)  # fmt: skip
    return Rates(per_s / per_node_trials, workers.count * per_s, head, per_s, 0.0, 0, workers.count,
                 _max_trial_s(spec), basis)  # fmt: skip


def _max_trial_s(spec: ExperimentSpec) -> float | None:
    return float(spec.limits.trial_timeout) if spec.limits.trial_timeout is not None else None


def _seconds(trial: TrialRecord, now: datetime) -> float:
    """A trial's billed seconds; a duration that is not a finite number (records are bounded since issue
    20; one stored before may not be) counts by its times instead."""
    if trial.state is TrialState.RUNNING:
        return max((now - trial.started_at).total_seconds(), 0.0)
    if trial.duration_s is not None and math.isfinite(trial.duration_s):
        return max(trial.duration_s, 0.0)
    if trial.ended_at is not None:
        return max((trial.ended_at - trial.started_at).total_seconds(), 0.0)
    return 0.0


def compute_ledger(
    rates: Rates,
    trials: Iterable[TrialRecord],
    started_at: datetime,
    now: datetime,
    budget_usd: float | None = None,
) -> CostLedger:
    """The ledger at ``now`` of a run started at ``started_at`` whose trials are ``trials``."""
    trials = list(trials)
    elapsed = max((now - started_at).total_seconds(), 0.0)
    per_trial: dict[int, float] = {}
    busy_s = 0.0
    for trial in trials:
        seconds = _seconds(trial, now)
        busy_s += seconds
        per_trial[trial.number] = per_trial.get(trial.number, 0.0) + seconds * rates.slot
    trials_usd = sum(per_trial.values())
    head_usd = rates.head * elapsed
    if rates.fleet_nodes:  # a fleet billed for the whole run
        fleet_usd = rates.fleet * elapsed
        idle_usd = max(fleet_usd - trials_usd, 0.0)
        node_seconds = rates.fleet_nodes * elapsed
    else:  # nodes held by trials, then the scale-down wait after the last one (and any minimum nodes)
        ends = [t.ended_at for t in trials if t.ended_at is not None]
        running = any(t.state is TrialState.RUNNING for t in trials)
        since_last = (now - max(ends)).total_seconds() if ends and not running else 0.0
        idle_usd = rates.tail_nodes * rates.node * min(max(since_last, 0.0), rates.tail_s) + rates.fleet * elapsed
        node_seconds = busy_s + (idle_usd / rates.node if rates.node else 0.0)
    spent = trials_usd + idle_usd + head_usd
    return CostLedger(
        spent_usd=spent,
        budget_usd=budget_usd,
        basis=rates.basis,
        trials_usd=trials_usd,
        head_usd=head_usd,
        idle_usd=idle_usd,
        per_trial_usd={k: round(v, 6) for k, v in per_trial.items()},
        node_seconds=node_seconds,
        as_of=now,
    )


class BudgetGuard:
    """What the driver asks before launching a trial, and whether the run must stop now."""

    def __init__(self, rates: Rates, budget_usd: float, started_at: datetime) -> None:
        self.rates = rates
        self.budget_usd = budget_usd
        self.started_at = started_at

    def ledger(self, trials: Iterable[TrialRecord], now: datetime) -> CostLedger:
        return compute_ledger(self.rates, trials, self.started_at, now, self.budget_usd)

    def exhausted(self, trials: Iterable[TrialRecord], now: datetime) -> bool:
        return self.ledger(trials, now).exhausted

    def worst_trial_s(self, trials: list[TrialRecord], now: datetime) -> float | None:
        """``trial_timeout``, else the longest trial so far (None before any ended: no projection)."""
        if self.rates.max_trial_s is not None:
            return self.rates.max_trial_s
        finished = [_seconds(t, now) for t in trials if t.state is not TrialState.RUNNING]
        return max(finished) if finished else None

    def projected(self, trials: Iterable[TrialRecord], now: datetime) -> float | None:
        """The spend if one more trial starts now and every trial runs to its worst case (None: unknown)."""
        trials = list(trials)
        worst = self.worst_trial_s(trials, now)
        if worst is None:
            return None
        spent = self.ledger(trials, now).spent_usd
        remaining = [max(worst - _seconds(t, now), 0.0) for t in trials if t.state is TrialState.RUNNING]
        horizon = max([*remaining, worst])
        rates = self.rates
        if rates.fleet_nodes:
            return spent + (rates.fleet + rates.head) * horizon
        tail = rates.tail_nodes * rates.node * rates.tail_s
        return spent + rates.slot * (sum(remaining) + worst) + (rates.head + rates.fleet) * horizon + tail

    def can_launch(self, trials: Iterable[TrialRecord], now: datetime) -> bool:
        """Launch only if the worst case of one more trial stays within the budget (and it is not spent)."""
        trials = list(trials)
        if self.exhausted(trials, now):
            return False
        projected = self.projected(trials, now)
        return projected is None or projected <= self.budget_usd
