"""An experiment's trial records as an Optuna study: for Optuna's importance evaluators, its
JournalStorage export (``rapids-hpo export --optuna-journal``) and so ``optuna-dashboard``.

Imports Optuna: used on the compute and by the CLI, never by the Function App.

Each trial keeps what Optuna's sampler drew (``TrialRecord.sampler_params``) with the distributions
the spec gives them (rebuilt through :func:`shared.hpo.search_space.suggest_params` on a
``FixedTrial``, so the mapping lives in one place), its fold reports as intermediate values, its state
and value, its start and end times; the hyperparameters it trained with, its metrics, attempt, engine
and error go into user attributes (``rapids_hpo_*``).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState

from shared.hpo.search_space import suggest_params
from shared.records import ExperimentRecord, TrialRecord, TrialState
from shared.spec import ExperimentSpec

STATES = {
    TrialState.RUNNING: OptunaState.RUNNING,
    TrialState.COMPLETED: OptunaState.COMPLETE,
    TrialState.PRUNED: OptunaState.PRUNED,
    TrialState.FAILED: OptunaState.FAIL,
    TrialState.TIMED_OUT: OptunaState.FAIL,
    TrialState.CANCELLED: OptunaState.FAIL,
}
"""Our trial states as Optuna's (Optuna has no TIMED_OUT or CANCELLED: such a trial FAILed, its reason and
our state kept in its user attributes)."""


def frozen_trial(record: TrialRecord, spec: ExperimentSpec) -> FrozenTrial:
    """``record`` as an Optuna trial (``number`` is reassigned by the study it is added to)."""
    fixed = optuna.trial.FixedTrial(record.sampler_params)
    if record.sampler_params:
        try:
            suggest_params(fixed, spec)
        except ValueError:  # the draw no longer fits the search space: keep the trial without params
            fixed = optuna.trial.FixedTrial({})
    state = STATES[record.state]
    value = record.value if state is OptunaState.COMPLETE else None
    if state is OptunaState.COMPLETE and (value is None or not math.isfinite(value)):
        state, value = OptunaState.FAIL, None
    started = _local(record.started_at)
    ended = _local(record.ended_at) if record.ended_at and state.is_finished() else None
    if state.is_finished() and ended is None:
        ended = started
    attrs: dict[str, Any] = {
        "rapids_hpo_number": record.number,
        "rapids_hpo_state": record.state.value,
        "rapids_hpo_attempt": record.attempt,
        "rapids_hpo_params": record.params,
        "rapids_hpo_metrics": record.metrics,
        "rapids_hpo_engine": record.engine,
        "rapids_hpo_error": record.error,
        "rapids_hpo_duration_s": record.duration_s,
    }
    return FrozenTrial(
        number=record.number,
        state=state,
        value=value,
        values=None,
        datetime_start=started,
        datetime_complete=ended,
        params=dict(fixed.params),
        distributions=dict(fixed.distributions),
        user_attrs=attrs,
        system_attrs={},
        intermediate_values={int(step): float(v) for step, v in record.intermediate.items() if math.isfinite(v)},
        trial_id=0,
    )


def _local(moment: datetime) -> datetime:
    """Optuna keeps naive local times (``datetime.now()``); ours are aware UTC."""
    return moment.astimezone().replace(tzinfo=None)


def build_study(
    record: ExperimentRecord,
    trials: list[TrialRecord],
    storage: optuna.storages.BaseStorage | str | None = None,
) -> optuna.Study:
    """A study named after the experiment holding every trial in number order (in memory by default)."""
    spec = record.run_spec
    study = optuna.create_study(
        storage=storage,
        study_name=record.id,
        direction=spec.objective.goal,
        load_if_exists=False,
    )
    study.set_user_attr("rapids_hpo_name", record.name)
    study.set_user_attr("rapids_hpo_status", record.status.value)
    study.set_user_attr("rapids_hpo_primary_metric", spec.objective.primary_metric)
    study.add_trials([frozen_trial(t, spec) for t in sorted(trials, key=lambda t: t.number)])
    return study


def write_journal(path: str, record: ExperimentRecord, trials: list[TrialRecord]) -> optuna.Study:
    """Write the experiment as an Optuna JournalStorage file at ``path`` (a new file)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return build_study(record, trials, JournalStorage(JournalFileBackend(path)))
