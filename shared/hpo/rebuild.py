"""The driver's study rebuilt from the store, on every (re)start: the study lives in the driver's memory.

Each record becomes the Optuna trial of its own number (Hyperband brackets by it): a finished one is added,
one to retry (interrupted on its first attempt) is asked now, its kept folds reported and Optuna's attributes
given back, to be launched later; a number without a usable record gets a failed placeholder. A same-space
warm start's trials are added first, so record ``n`` is Optuna's trial ``W + n`` on every (re)start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna

from shared.hpo import stopping
from shared.hpo.cluster import optuna_state
from shared.hpo.objectives import constraint_values, objective_values
from shared.hpo.resume import retry_record
from shared.hpo.search_builders import CONSTRAINTS_ATTR
from shared.hpo.search_space import suggest_params
from shared.hpo.warm_start import seed_study
from shared.ports import TrialStore
from shared.records import TrialRecord, TrialState, WarmStartSeed
from shared.spec import ExperimentSpec
from shared.trials import end_running_trials

INTERRUPTED = "interrupted: the driver stopped while this trial was running"


@dataclass
class Rebuilt:
    """What the store held: every record by number, the retries asked (launched first), a warm start's
    configurations still to run."""

    records: dict[int, TrialRecord] = field(default_factory=dict)
    retries: list[tuple[TrialRecord, optuna.Trial]] = field(default_factory=list)
    warm_configs: list[dict[str, Any]] = field(default_factory=list)


def rebuild_study(
    study: optuna.Study, spec: ExperimentSpec, store: TrialStore, experiment_id: str, warm_start: WarmStartSeed | None
) -> Rebuilt:
    """Fill ``study`` from the store's trials of ``experiment_id`` (interrupted ones end FAILED first)."""
    rebuilt = Rebuilt()
    if warm_start is not None:
        rebuilt.warm_configs = seed_study(study, spec, warm_start)
    interrupted = {t.number for t in end_running_trials(store, experiment_id, INTERRUPTED)}
    records = {record.number: record for record in store.list_trials(experiment_id)}
    for number in range(max(records, default=-1) + 1):
        record = records.get(number)
        if record is not None:
            rebuilt.records[number] = record
        if record is not None and number in interrupted and record.attempt == 1 and record.sampler_params:
            rebuilt.retries.append(ask_retry(study, spec, record))
        elif record is None or not _add_finished(study, spec, record):
            study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    return rebuilt


def ask_retry(study: optuna.Study, spec: ExperimentSpec, interrupted: TrialRecord) -> tuple[TrialRecord, optuna.Trial]:
    """The retry of an interrupted trial: the same parameters and number, from the folds it finished."""
    study.enqueue_trial(interrupted.sampler_params, skip_if_exists=False)
    trial = study.ask()
    suggest_params(trial, spec)
    record = retry_record(interrupted)
    for step, value in sorted(record.intermediate.items()):
        if math.isfinite(value) and not spec.objective.multi:  # Optuna keeps single-objective steps only
            trial.report(value, step)  # what an uninterrupted run had reported by now; no decision asked
    for key, value in record.optuna_attrs.items():  # and the pruner's state after those decisions
        study._storage.set_trial_system_attr(trial._trial_id, key, value)
    return record, trial


def _add_finished(study: optuna.Study, spec: ExperimentSpec, record: TrialRecord) -> bool:
    """Add a finished trial to the study; False if its draw no longer fits the spec (or it has none)."""
    if not record.sampler_params:
        return False
    fixed = optuna.trial.FixedTrial(record.sampler_params)
    try:
        suggest_params(fixed, spec)
    except ValueError:  # the spec changed under a finished trial: it no longer informs the sampler
        return False
    state = optuna_state(record.state)
    complete = state is optuna.trial.TrialState.COMPLETE
    values = objective_values(spec, record.metrics, record.value) if complete else None
    if complete and record.value is None:
        values = "no value"
    constraints = constraint_values(spec, record.metrics) if spec.objective.constraints else []
    if complete and (isinstance(values, str) or isinstance(constraints, str)):
        state, values = optuna.trial.TrialState.FAIL, None
    study.add_trial(
        optuna.trial.create_trial(
            params=fixed.params,
            distributions=fixed.distributions,
            values=values if isinstance(values, list) else None,
            state=state,
            user_attrs={CONSTRAINTS_ATTR: constraints} if isinstance(constraints, list) and constraints else None,
            intermediate_values={} if spec.objective.multi else {int(k): v for k, v in record.intermediate.items()},
            system_attrs=_finished_attrs(record, spec.objective.primary_metric),
        )
    )
    return True


def _finished_attrs(record: TrialRecord, primary_metric: str) -> dict[str, object]:
    """What Optuna kept with a finished trial: its numbers (successive halving's rungs, as the pruner left
    them) and, for the terminator, its fold scores (from the record's metrics)."""
    attrs: dict[str, object] = dict(record.optuna_attrs)
    scores = stopping.fold_scores(record, primary_metric) if record.state is TrialState.COMPLETED else None
    if scores is not None:
        attrs[stopping.CV_SCORES_KEY] = scores
    return attrs
