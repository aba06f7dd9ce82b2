"""Pruning decisions survive a driver restart: a run whose driver is killed mid-trial and restarted stops
the same trials at the same steps as an uninterrupted run of the same spec and seed (real Dask clusters,
a real SIGKILL of the driver's process and its in-process cluster).

Successive halving keeps its rungs in Optuna's per-trial system attributes, which the rebuilt study lacked:
every rung then looked empty, so each later trial was promoted. Hyperband also brackets trials by a hash
of the study's name, which was random per process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from shared.hpo.driver import HpoDriver
from shared.records import TrialState
from shared.store.local import LocalStore
from tests.test_hpo_driver import make_spec, new_experiment
from tests.trial_functions import scripted_trial

FOLDS = 5
DRIVER_SCRIPT = """
import sys
from pathlib import Path
from distributed import Client, LocalCluster
from shared.hpo.driver import HpoDriver
from shared.spec import load_spec
from shared.store.local import LocalStore
from tests.trial_functions import scripted_trial

store = LocalStore(Path(sys.argv[1]))
record = store.get_experiment(sys.argv[2])
with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster:
    with Client(cluster) as client:
        HpoDriver(
            load_spec(record.spec.to_document()), record.id, store, client, trial_fn=scripted_trial, poll_interval=0.02,
            fold_write_interval=0.0,
        ).run()
"""


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cluster,
        Client(cluster) as dask_client,
    ):
        yield dask_client


def spec_for(policy: dict):
    return make_spec(
        trial={"model": "random_forest", "cv_folds": FOLDS},
        search_space={
            "max_features": {"type": "uniform", "min_value": 0.2, "max_value": 1.0},
            "n_estimators": {"type": "choice", "values": [120]},  # ms per fold (scripted_trial)
        },
        sampling_algorithm={"type": "random", "seed": 11},
        early_termination=policy,
        limits={"max_total_trials": 12, "max_concurrent_trials": 1},
    )


def decisions(store: LocalStore, experiment_id: str) -> list[tuple[int, float, str, int]]:
    """Per trial: number, its draw, how it ended and the last step it reported."""
    return [
        (t.number, t.params["max_features"], t.state.value, max(t.intermediate, default=0))
        for t in store.list_trials(experiment_id)
    ]


def kill_mid_trial(store: LocalStore, experiment_id: str, store_dir: Path, after: int) -> int:
    """Run the driver in its own process; SIGKILL it (and its cluster) once ``after`` trials have ended
    and the next one is RUNNING in the store with some but not all of its folds. Returns that trial."""
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER_SCRIPT, str(store_dir), experiment_id],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            trials = store.list_trials(experiment_id)
            ended = [t for t in trials if t.state is not TrialState.RUNNING]
            mid = [t for t in trials if t.state is TrialState.RUNNING and 1 <= len(t.folds) < FOLDS - 1]
            if len(ended) >= after and mid:
                return mid[0].number
            time.sleep(0.01)
        raise AssertionError(
            f"the driver never had a trial mid-way after {after} ended: {decisions(store, experiment_id)}"
        )
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param({"type": "successive_halving", "min_resource": 1, "reduction_factor": 2}, id="halving"),
        pytest.param({"type": "hyperband", "min_resource": 1, "reduction_factor": 2}, id="hyperband"),
    ],
)
@pytest.mark.slow  # a driver run, restarted (several seconds each): CI runs it
def test_a_restarted_driver_stops_the_trials_an_uninterrupted_run_stops(client, tmp_path, policy) -> None:
    spec = spec_for(policy)
    store = LocalStore(tmp_path / "store")
    whole = new_experiment(store, spec)
    HpoDriver(spec, whole, store, client, trial_fn=scripted_trial, poll_interval=0.02).run()
    expected = decisions(store, whole)
    assert {state for _, _, state, _ in expected} == {"COMPLETED", "PRUNED"}  # the policy decides both ways

    restarted = new_experiment(store, spec)
    interrupted = kill_mid_trial(store, restarted, tmp_path / "store", after=5)
    left = {t.number: t for t in store.list_trials(restarted)}
    assert left[interrupted].state is TrialState.RUNNING and left[interrupted].folds
    HpoDriver(spec, restarted, store, client, trial_fn=scripted_trial, poll_interval=0.02).run()
    assert decisions(store, restarted) == expected
    retried = {t.number: t for t in store.list_trials(restarted)}[interrupted]
    assert retried.attempt == 2 and retried.resumed_folds >= 1  # it went on from its folds, not from scratch
