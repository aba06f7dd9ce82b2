"""Operations over an experiment's trial records that several steps share (one rule each)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from shared.ports import TrialStore
from shared.records import TrialRecord, TrialState, updated, utcnow


def end_running_trials(
    store: TrialStore,
    experiment_id: str,
    error: str,
    state: TrialState = TrialState.FAILED,
    trials: list[TrialRecord] | None = None,
) -> list[TrialRecord]:
    """Mark every trial still RUNNING in the store ``state`` (FAILED, or CANCELLED when the experiment was)
    with ``error`` (nothing can still run it); return the records written. ``trials``: the experiment's
    trials as the caller read them (else they are read here)."""
    now = utcnow()
    written: list[TrialRecord] = []
    for trial in store.list_trials(experiment_id) if trials is None else trials:
        if trial.state is TrialState.RUNNING:
            failed = updated(
                trial,
                state=state,
                error=error,
                ended_at=now,
                duration_s=max((now - trial.started_at).total_seconds(), 0.0),
            )
            store.put_trial(failed)
            written.append(failed)
    return written


def counts_by_state(trials: Iterable[TrialRecord]) -> dict[str, int]:
    """``{state: number of trials}`` for the states present."""
    return dict(Counter(trial.state.value for trial in trials))
