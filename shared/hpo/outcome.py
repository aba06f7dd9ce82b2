"""How a driver run ended (``ExperimentOutcome``), from its trial records and why it stopped."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from shared.cost.ledger import BUDGET_REACHED
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


def experiment_outcome(trials: Iterable[TrialRecord], goal: str, stop_reason: str | None) -> ExperimentOutcome:
    """The outcome of a run whose trials are ``trials``; ``stop_reason``: cancelled, timeout, budget or None."""
    records = sorted(trials, key=lambda r: r.number)
    counts = counts_by_state(records)
    best = best_of(records, goal)
    done = len(records)
    if stop_reason == "cancelled":
        return ExperimentOutcome("CANCELLED", "cancelled", done, best, None, counts)
    if best is None:
        failed = [r for r in records if r.error]
        first = failed[0].error if failed else "no trial completed"
        why = {
            "timeout": "timeout before any trial completed",
            "budget": f"{BUDGET_REACHED} before any trial completed",
        }.get(stop_reason or "", "every trial failed")
        return ExperimentOutcome("FAILED", why, done, None, f"{why}; first error: {first}", counts)
    reason = {"timeout": "timeout reached", "budget": BUDGET_REACHED}.get(stop_reason or "", "trial budget used")
    return ExperimentOutcome("COMPLETED", reason, done, best, None, counts)
