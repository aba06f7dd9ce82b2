"""The run time ``plan`` expects, from trials measured here: the last finished run of the same workload.

The plan's range (:func:`shared.cost.estimate.run_time_range`) is bounded by ``trial_timeout``: a limit,
several times what a trial takes (the flights example's range was 8-17x its 2-minute run). What a trial
takes depends on the data, the model, the folds and the workers, not on a catalogue, so the expectation
is measured: the mean duration of the completed trials of the newest finished experiment in this store
with the same data (uri, target, rows, features), model, folds, engine and compute section. The search
space may differ (a run with more trees takes longer): the plan says which run it took the figure from.
With no such run it says so, and that the range is all there is.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.cost.estimate import front_refits
from shared.records import ExperimentRecord, ExperimentStatus, TrialState

if TYPE_CHECKING:
    from shared.ports import Store
    from shared.spec import ExperimentSpec

EXPERIMENTS_SEARCHED = 100
"""The newest experiments looked through for a run of the same workload."""


@dataclass(frozen=True)
class MeasuredTrials:
    experiment_id: str
    ended_at: datetime | None
    trials: int
    mean_s: float


def workload(spec: ExperimentSpec | None) -> tuple[Any, ...] | None:
    """What makes a trial take as long as another: the data, the model, the folds, the compute (None
    without a spec: a request refused at intake)."""
    if spec is None:
        return None
    dataset, trial = spec.dataset, spec.trial
    return (
        (dataset.uri, dataset.target, dataset.max_rows, dataset.features, dataset.format),
        (trial.model, trial.cv_folds, trial.engine),
        spec.compute,
    )


def finished_runs(
    store: Store, spec: ExperimentSpec, searched: int = EXPERIMENTS_SEARCHED
) -> Iterator[ExperimentRecord]:
    """The finished (COMPLETED) runs of ``spec``'s workload among the newest ``searched`` experiments, newest
    first."""
    wanted = workload(spec)
    records, _ = store.list_experiments(limit=searched)
    for record in records:
        if not isinstance(record, ExperimentRecord) or record.status is not ExperimentStatus.COMPLETED:
            continue
        if workload(record.spec) == wanted:
            yield record


def last_run(store: Store, spec: ExperimentSpec) -> MeasuredTrials | None:
    """The completed trials' mean duration in the newest finished run of ``spec``'s workload, or None."""
    for record in finished_runs(store, spec):
        durations = [
            t.duration_s
            for t in store.list_trials(record.id)
            if t.state is TrialState.COMPLETED and t.duration_s is not None and math.isfinite(t.duration_s)
        ]
        if durations:
            return MeasuredTrials(record.id, record.ended_at, len(durations), sum(durations) / len(durations))
    return None


def expected_line(spec: ExperimentSpec, measured: MeasuredTrials | None) -> str:
    """``expects ~1.8 min: 5 waves of 2 trials x 21 s, the mean of 10 completed trials of exp-... (...)``."""
    if measured is None:
        return (
            "no run of this data and model has finished here to measure a trial by: the range above is "
            "bounded by the limits, not by what a trial takes (run it once, and plan expects from that run)"
        )
    total = spec.effective_total_trials()
    at_once = max(min(spec.limits.max_concurrent_trials, total), 1)
    waves = math.ceil(total / at_once)
    refits = front_refits(spec)
    seconds = (waves + refits) * measured.mean_s
    steps = f"{waves} waves of {at_once} trials"
    if refits:  # each counted as a trial, as the range counts them
        steps = f"({steps} + up to {refits} front model refits)"
    when = f", ended {measured.ended_at:%Y-%m-%d %H:%M} UTC" if measured.ended_at else ""
    shown = f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
    return (
        f"~{shown}: {steps} x {measured.mean_s:.0f} s, the mean of the "
        f"{measured.trials} completed trials of {measured.experiment_id}{when} (same data, model, folds and "
        "compute; early stops make it shorter, larger search values longer)"
    )
