"""The cost rules a running experiment is held to, as the state machine's poll and finalize steps ask them.

Pure functions of the record, its trials and a clock (the step reads the trials once and passes its own
``now``), so the machine knows *when* to ask and what to do with the answer, and this module *what* a run
costs and when it must stop:

- :func:`run_ledger`: the cost so far (node-seconds x the catalogue's prices, by the compute section's
  billing profile), or None for an unpriced run; a stop already recorded is kept.
- :func:`budget_stops`: the hard stop at ``limits.max_cost`` (what still runs is cancelled, the best trial
  so far finalized).
- :func:`cost_guard_reason`: the guard that fails a run past its time allowance (:func:`time_allowance`:
  its timeout and its front refits, with a grace period) or past ``compute.max_node_hours``.

The driver's own guard (no trial launched that could pass the budget) is
:class:`shared.cost.ledger.BudgetGuard`, on the compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from shared.cost.catalogue import load_catalogue
from shared.cost.estimate import front_refits, run_time_range
from shared.cost.ledger import BUDGET_REACHED, compute_ledger, rates_for
from shared.records import CostLedger, ExperimentRecord, TrialRecord

if TYPE_CHECKING:
    from shared.spec import ExperimentSpec

TIMEOUT_GRACE = 1.1
"""A run may go on to this multiple of its timed work (plus :data:`TIMEOUT_SLACK_S`) before the guard."""
TIMEOUT_SLACK_S = 300.0


def run_ledger(
    record: ExperimentRecord, trials: Sequence[TrialRecord], now: datetime, *, driver_stopped: bool = False
) -> CostLedger | None:
    """The experiment's cost at ``now``, or None before it started or when some billed node has no price.
    ``driver_stopped``: the driver itself stopped launching trials at the budget (its outcome says so)."""
    if record.started_at is None:
        return None
    spec = record.run_spec
    rates = rates_for(spec, load_catalogue())
    if rates is None:
        return None
    ledger = compute_ledger(rates, trials, record.started_at, now, spec.limits.max_cost)
    if record.cost is not None and record.cost.stopped:
        ledger.stopped = record.cost.stopped
    if driver_stopped:
        ledger.stopped = BUDGET_REACHED
    return ledger


def budget_stops(ledger: CostLedger | None, running: bool) -> bool:
    """Whether the budget stops a run that is still ``running`` now (its ledger has reached the budget)."""
    return running and ledger is not None and ledger.exhausted


def time_allowance(spec: ExperimentSpec) -> float | None:
    """How long a run of ``spec`` may go on before the guard fails it (None without ``limits.timeout``):
    ``(timeout + front refits x one trial's time) x TIMEOUT_GRACE + TIMEOUT_SLACK_S``. The front refits run
    after the search, outside ``limits.timeout``, and the plan prices each as one trial's time
    (:func:`shared.cost.estimate.run_time_range`); the guard allows exactly what the plan's top counts, so a
    run the plan priced is never failed inside its price, and one past it still is."""
    timeout = spec.limits.timeout
    if timeout is None:
        return None
    times = run_time_range(spec)
    return (float(timeout) + times.front_refits * times.per_trial_s) * TIMEOUT_GRACE + TIMEOUT_SLACK_S


def cost_guard_reason(record: ExperimentRecord, now: datetime) -> str | None:
    """Why the cost guard stops this run (None: it does not): past its :func:`time_allowance`, or more
    node-hours spent than ``compute.max_node_hours`` by the backend's own rule (its compute section's billing
    profile)."""
    if record.started_at is None:
        return None
    elapsed = (now - record.started_at).total_seconds()
    spec = record.run_spec
    allowance = time_allowance(spec)
    if allowance is not None and elapsed > allowance:
        refits = front_refits(spec)
        also = f" and {refits} front refits" if refits else ""
        return (
            f"cost guard: running {elapsed:.0f} s, past the allowance of {allowance:.0f} s for the experiment "
            f"timeout of {spec.limits.timeout} s{also}"
        )
    max_node_hours = getattr(spec.compute, "max_node_hours", None)
    if max_node_hours:
        spent = spec.compute.billing(spec).node_hours(elapsed, overheads=False)
        if spent > float(max_node_hours):
            return f"cost guard: {spent:.2f} node-hours used, over max_node_hours={max_node_hours}"
    return None
