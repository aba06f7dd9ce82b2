"""A retried trial resumes from the folds its interrupted attempt finished (real Dask LocalClusters).

The folds a trial finished are written to its record as they are reported; a driver restarted after a
crash retries the trial from them; Dask running a trial task again after its worker was lost (a Spot
eviction) resumes from what the task published on the scheduler. Which folds were trained is read from
the records (``TrialRecord.folds[*].attempt``, ``resumed_folds``) and the workers' own fold timings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gpu_jobs.data import FLIGHTS_TARGET, FLIGHTS_URI
from gpu_jobs.train import run_trial
from shared.api import create_api
from shared.config import Settings
from shared.context import set_context
from shared.hpo.driver import HpoDriver
from shared.hpo.pruners import _PARTICIPANT_STATES
from shared.records import FoldResult, TrialRecord, TrialState
from shared.store.local import LocalStore
from tests.control_plane import local_context
from tests.test_hpo_driver import make_spec, new_experiment
from tests.trial_functions import scripted_trial

MEANS = ("accuracy", "roc_auc", "log_loss")


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


@pytest.mark.slow  # two real trainings; the default run keeps the scripted resume cases and test_gpu_jobs_resume.py
def test_a_retried_trial_trains_only_the_folds_its_first_attempt_did_not_finish(store, dask_client, tmp_path):
    spec = real_spec(max_rows=3000, n_estimators=12, max_depth=6)
    full_id = new_experiment(store, spec)
    HpoDriver(spec, full_id, store, dask_client).run()
    (full,) = store.list_trials(full_id)
    assert full.state is TrialState.COMPLETED and [f.step for f in full.folds] == [1, 2, 3, 4]
    assert {f.attempt for f in full.folds} == {1} and full.resumed_folds == 0
    assert full.intermediate == {1: pytest.approx(full.folds[0].scores["accuracy"]), **full.intermediate}

    retried_id = new_experiment(store, spec)
    store.put_trial(interrupted_after(full, retried_id, folds=2))
    outcome = HpoDriver(spec, retried_id, store, dask_client).run()
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
    set_context(local_context(tmp_path))  # the API serves the same store: what was resumed is on the record
    try:
        (served,) = (
            TestClient(create_api(settings=Settings.from_env()), base_url="http://localhost")
            .get(f"/api/experiments/{retried_id}/trials?folds=true")
            .json()
        )
    finally:
        set_context(None)
    assert served["resumed_folds"] == 2 and [f["attempt"] for f in served["folds"]] == [1, 1, 2, 2]


@pytest.mark.parametrize(("gap", "expected"), [(0.012, TrialState.COMPLETED), (0.02, TrialState.PRUNED)])
def test_a_resumed_trial_gets_the_pruning_decision_of_a_full_run(store, dask_client, gap, expected):
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
        driver = HpoDriver(spec, experiment_id, store, dask_client, trial_fn=scripted_trial, poll_interval=0.05)
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


@pytest.mark.parametrize(("first_fold_s", "expected"), [(0.1, TrialState.COMPLETED), (0.9, TrialState.TIMED_OUT)])
def test_the_resumed_folds_time_counts_against_trial_timeout(store, dask_client, first_fold_s, expected):
    """trial_timeout 1 s, folds of 0.2 s: a retry whose kept fold took 0.9 s is stopped after its next
    fold, as the uninterrupted trial would have been; one whose kept fold took 0.1 s finishes."""
    spec = make_spec(
        search_space={
            "max_features": {"type": "uniform", "min_value": 0.2, "max_value": 1.0},
            "n_estimators": {"type": "choice", "values": [200]},
        },
        limits={"max_total_trials": 1, "max_concurrent_trials": 1, "trial_timeout": 1},
    )
    experiment_id = new_experiment(store, spec)
    params = {"max_features": 0.6, "n_estimators": 200}
    fold = FoldResult(step=1, scores={"accuracy": 0.58}, fit_seconds=first_fold_s, split="scripted-1")
    store.put_trial(
        TrialRecord(
            experiment_id=experiment_id, number=0, params=params, sampler_params=params,
            state=TrialState.RUNNING, intermediate={1: 0.58}, folds=[fold],
        )
    )  # fmt: skip
    HpoDriver(spec, experiment_id, store, dask_client, trial_fn=scripted_trial, poll_interval=0.05).run()
    (trial,) = store.list_trials(experiment_id)
    assert trial.state is expected and trial.resumed_folds == 1 and trial.attempt == 2
    if expected is TrialState.TIMED_OUT:
        assert (trial.error or "").endswith("exceeded after step 2") and max(trial.intermediate) == 1
    else:
        assert trial.duration_s is not None and trial.duration_s + first_fold_s < 1.0


# ------------------------------------------------------------------ real interruptions (slow: ~1 s folds)
SLOW_TRIAL = {"max_rows": 40000, "n_estimators": 30, "max_depth": 10}
DRIVER_SCRIPT = """
import sys
from pathlib import Path
from distributed import Client, LocalCluster
from fastapi.testclient import TestClient
from shared.api import create_api
from shared.context import set_context
from shared.hpo.driver import HpoDriver
from shared.spec import load_spec
from shared.store.local import LocalStore

store = LocalStore(Path(sys.argv[1]))
record = store.get_experiment(sys.argv[2])
with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster:
    with Client(cluster) as client:
        HpoDriver(record.run_spec, record.id, store, client, poll_interval=0.05).run()
"""


def wait_for_folds(store: LocalStore, experiment_id: str, timeout_s: float = 90.0) -> list[FoldResult]:
    """The folds of trial 0 once the store shows it RUNNING with at least one (written mid-trial)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        trials = store.list_trials(experiment_id)
        if trials and trials[0].state is TrialState.RUNNING and trials[0].folds:
            return trials[0].folds
        time.sleep(0.05)
    raise AssertionError("trial 0 never showed a finished fold while running")


def uninterrupted(trial: TrialRecord, seed: int) -> dict:
    return run_trial(
        data=FLIGHTS_URI, target=FLIGHTS_TARGET, model="random_forest", params=trial.params, cv_folds=4,
        seed=seed, max_rows=SLOW_TRIAL["max_rows"], n_jobs=1,
    )  # fmt: skip


def assert_resumed_as_a_full_run(trial: TrialRecord, resumed: int, seed: int) -> None:
    assert trial.state is TrialState.COMPLETED and trial.resumed_folds == resumed
    assert [f.step for f in trial.folds] == [1, 2, 3, 4]
    # The run that finished the trial fitted only the folds after the resumed ones: its own fit time is
    # the sum of theirs, by the worker's clock.
    assert trial.metrics["fit_seconds"] == pytest.approx(sum(f.fit_seconds for f in trial.folds[resumed:]))
    reference = uninterrupted(trial, seed)
    assert trial.value == reference["accuracy"] and trial.metrics["fold_scores"] == reference["fold_scores"]


@pytest.mark.slow
def test_a_driver_killed_mid_trial_is_restarted_and_its_retry_trains_only_the_missing_folds(
    store, dask_client, tmp_path
):
    spec = real_spec(**SLOW_TRIAL)
    experiment_id = new_experiment(store, spec)
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER_SCRIPT, str(tmp_path / "store"), experiment_id],
        cwd=Path(__file__).resolve().parents[1],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_folds(store, experiment_id)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its in-process cluster die mid-trial
        driver.wait(timeout=30)
    (left,) = store.list_trials(experiment_id)
    kept = len(left.folds)
    assert left.state is TrialState.RUNNING and 1 <= kept < 4
    HpoDriver(spec, experiment_id, store, dask_client, poll_interval=0.05).run()
    (trial,) = store.list_trials(experiment_id)
    assert trial.attempt == 2 and [f.attempt for f in trial.folds] == [1] * kept + [2] * (4 - kept)
    assert trial.folds[:kept] == left.folds
    assert_resumed_as_a_full_run(trial, kept, seed=7)


@pytest.mark.slow
def test_a_trial_whose_worker_is_lost_resumes_in_another_slot_from_the_folds_it_reported(store, dask_client):
    spec = real_spec(**SLOW_TRIAL)
    experiment_id = new_experiment(store, spec)
    driver = HpoDriver(spec, experiment_id, store, dask_client, poll_interval=0.05)
    runner = threading.Thread(target=driver.run)
    runner.start()
    try:
        seen = wait_for_folds(store, experiment_id)
        (worker,) = [slot.worker for slot in driver.slots.slots.values() if slot.trial == 0]  # the slot it runs in
        assert worker is not None
        pid = dask_client.run(os.getpid, workers=[worker])[worker]
        os.kill(pid, signal.SIGKILL)  # as a Spot eviction: the trial goes to the next free slot
    finally:
        runner.join(timeout=120)
    (trial,) = store.list_trials(experiment_id)
    assert trial.attempt == 1 and {f.attempt for f in trial.folds} == {1}
    assert len(seen) <= trial.resumed_folds < 4  # at least what the store had seen was not trained again
    assert trial.folds[: len(seen)] == seen
    assert_resumed_as_a_full_run(trial, trial.resumed_folds, seed=7)
