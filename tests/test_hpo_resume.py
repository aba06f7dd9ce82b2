"""A retried trial resumes from the folds its interrupted attempt finished (real Dask LocalClusters).

The folds a trial finished are written to its record as they are reported; a driver restarted after a
crash retries the trial from them; Dask running a trial task again after its worker was lost (a Spot
eviction) resumes from what the task published on the scheduler. Which folds were trained is read from
the records (``TrialRecord.folds[*].attempt``, ``resumed_folds``) and the workers' own fold timings.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from gpu_jobs.data import FLIGHTS_TARGET, FLIGHTS_URI
from shared.hpo.driver import HpoDriver
from shared.hpo.pruners import _PARTICIPANT_STATES
from shared.records import FoldResult, TrialRecord, TrialState
from shared.store.local import LocalStore
from tests.test_hpo_driver import make_spec, new_experiment
from tests.trial_functions import scripted_trial

MEANS = ("accuracy", "roc_auc", "log_loss")


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as dask_client,
    ):
        yield dask_client


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def real_spec(max_rows: int, n_estimators: int, max_depth: int, cv_folds: int = 4):
    return make_spec(
        dataset={"uri": FLIGHTS_URI, "target": FLIGHTS_TARGET, "max_rows": max_rows},
        trial={"model": "random_forest", "cv_folds": cv_folds},
        search_space={
            "max_features": {"type": "uniform", "min_value": 0.4, "max_value": 0.8},
            "n_estimators": {"type": "choice", "values": [n_estimators]},
            "max_depth": {"type": "choice", "values": [max_depth]},
        },
        limits={"max_total_trials": 1, "max_concurrent_trials": 1},
    )


def interrupted_after(record: TrialRecord, experiment_id: str, folds: int) -> TrialRecord:
    """``record`` as a driver that died after its ``folds``-th fold left it in the store."""
    return record.model_copy(
        update={
            "experiment_id": experiment_id,
            "state": TrialState.RUNNING,
            "value": None,
            "metrics": {},
            "ended_at": None,
            "duration_s": None,
            "engine": None,
            "folds": record.folds[:folds],
            "intermediate": {step: v for step, v in record.intermediate.items() if step <= folds},
        }
    )


def test_a_retried_trial_trains_only_the_folds_its_first_attempt_did_not_finish(store, client):
    spec = real_spec(max_rows=3000, n_estimators=12, max_depth=6)
    full_id = new_experiment(store, spec)
    HpoDriver(spec, full_id, store, client).run()
    (full,) = store.list_trials(full_id)
    assert full.state is TrialState.COMPLETED and [f.step for f in full.folds] == [1, 2, 3, 4]
    assert {f.attempt for f in full.folds} == {1} and full.resumed_folds == 0
    assert full.intermediate == {1: pytest.approx(full.folds[0].scores["accuracy"]), **full.intermediate}

    retried_id = new_experiment(store, spec)
    store.put_trial(interrupted_after(full, retried_id, folds=2))
    outcome = HpoDriver(spec, retried_id, store, client).run()
    (retried,) = store.list_trials(retried_id)
    assert outcome.status == "COMPLETED" and retried.state is TrialState.COMPLETED
    assert retried.attempt == 2 and retried.resumed_folds == 2
    assert [(f.step, f.attempt) for f in retried.folds] == [(1, 1), (2, 1), (3, 2), (4, 2)]  # 2 folds trained
    assert retried.folds[:2] == full.folds[:2]  # the first attempt's folds, timings included
    assert [f.scores for f in retried.folds] == [f.scores for f in full.folds]
    assert retried.value == full.value and retried.intermediate == full.intermediate
    for name in MEANS:
        assert retried.metrics[name] == full.metrics[name]
    assert retried.metrics["fit_seconds"] == pytest.approx(sum(f.fit_seconds for f in retried.folds[2:]))


@pytest.mark.parametrize(("gap", "expected"), [(0.012, TrialState.COMPLETED), (0.02, TrialState.PRUNED)])
def test_a_resumed_trial_gets_the_pruning_decision_of_a_full_run(store, client, gap, expected):
    """Minimize with Bandit (slack 0.01 from step 2): the trial's best value up to step 2 is its step-1
    value, which only the first attempt reported. Without it the gap of 0.012 would be pruned."""
    spec = make_spec(
        trial={"model": "random_forest", "cv_folds": 3},
        objective={"primary_metric": "log_loss", "goal": "minimize"},
        early_termination={"type": "bandit", "slack_amount": 0.01, "delay_evaluation": 2},
        limits={"max_total_trials": 2, "max_concurrent_trials": 1},
    )
    reference, weaker = 0.5, 0.5 + gap
    means = {1: reference - 0.02, 2: reference - 0.015, 3: reference - 0.01}  # what scripted_trial reports
    done = TrialRecord(
        experiment_id="",
        number=0,
        params={"max_features": reference, "n_estimators": 20},
        sampler_params={"max_features": reference, "n_estimators": 20},
        state=TrialState.COMPLETED,
        value=reference,
        intermediate=means,
    )
    first_fold = FoldResult(step=1, scores={"log_loss": weaker - 0.02}, split="scripted-1")
    running = done.model_copy(
        update={
            "number": 1,
            "params": {"max_features": weaker, "n_estimators": 20},
            "sampler_params": {"max_features": weaker, "n_estimators": 20},
            "state": TrialState.RUNNING,
            "value": None,
            "intermediate": {},
        }
    )
    results = {}
    for kept in (0, 1):  # retried from scratch (a full run of the trial), then resumed after fold 1
        experiment_id = new_experiment(store, spec)
        store.put_trial(done.model_copy(update={"experiment_id": experiment_id}))
        folds = [first_fold][:kept]
        intermediate = {1: weaker - 0.02} if kept else {}
        store.put_trial(
            running.model_copy(update={"experiment_id": experiment_id, "folds": folds, "intermediate": intermediate})
        )
        driver = HpoDriver(spec, experiment_id, store, client, trial_fn=scripted_trial, poll_interval=0.05)
        driver.run()
        results[kept] = {t.number: t for t in store.list_trials(experiment_id)}[1]
        # The pruner saw each of the trial's values once: one taking part (the failed attempt never does).
        seen = [t for t in driver.study.get_trials(states=_PARTICIPANT_STATES) if t.params["max_features"] == weaker]
        assert len(seen) == 1 and sorted(seen[0].intermediate_values) == sorted(results[kept].intermediate)
    full, resumed = results[0], results[1]
    assert full.state is expected and resumed.state is expected
    assert resumed.intermediate == pytest.approx(full.intermediate)
    assert (full.resumed_folds, resumed.resumed_folds) == (0, 1)
    assert [f.attempt for f in resumed.folds] == [1] + [2] * (len(full.folds) - 1)
    if expected is TrialState.PRUNED:
        assert max(full.intermediate) == 2 and [f.step for f in full.folds] == [1]  # the pruned fold is not kept
