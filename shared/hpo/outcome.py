"""How a driver run ended (``ExperimentOutcome``), from its trial records and why it stopped."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from shared.cost.ledger import BUDGET_REACHED
from shared.hpo.stopping import Stop
from shared.records import BestTrial, TrialRecord, best_of
from shared.trials import counts_by_state


@dataclass
class ExperimentOutcome:
    """How a driver run ended."""

    status: Literal["COMPLETED", "FAILED", "CANCELLED"]
    reason: str
    trials_done: int
    best: BestTrial | None = None
    error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    stopped_by: str | None = None
    """What ended the run: max_total_trials, timeout, max_cost, cancelled, or a stopping rule's spec field
    (target_value, no_improvement_trials, terminator)."""


def experiment_outcome(
    trials: Iterable[TrialRecord], goal: str, stop_reason: str | None, stopped: Stop | None = None
) -> ExperimentOutcome:
    """The outcome of a run whose trials are ``trials``; ``stop_reason``: cancelled, timeout, budget or None;
    ``stopped``: the stopping rule that ended it, if one did."""
    records = sorted(trials, key=lambda r: r.number)
    counts = counts_by_state(records)
    best = best_of(records, goal)
    done = len(records)
    by = {"cancelled": "cancelled", "timeout": "timeout", "budget": "max_cost"}.get(stop_reason or "")
    by = by or (stopped.stopped_by if stopped else "max_total_trials")
    if stop_reason == "cancelled":
        return ExperimentOutcome("CANCELLED", "cancelled", done, best, None, counts, by)
    if best is None:
        failed = [r for r in records if r.error]
        first = failed[0].error if failed else "no trial completed"
        why = {
            "timeout": "timeout before any trial completed",
            "budget": f"{BUDGET_REACHED} before any trial completed",
        }.get(stop_reason or "", "every trial failed")
        return ExperimentOutcome("FAILED", why, done, None, f"{why}; first error: {first}", counts, by)
    reason = {"timeout": "timeout reached", "budget": BUDGET_REACHED}.get(stop_reason or "", "trial budget used")
    if stop_reason is None and stopped is not None:
        reason = stopped.reason
    return ExperimentOutcome("COMPLETED", reason, done, best, None, counts, by)
