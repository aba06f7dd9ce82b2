"""A cancelled vmcluster run keeps its best model so far (issue 30): the head node's driver, told of the
cancel through the record the control plane republishes in the area (as ``VMClusterBackend.cancel`` does),
stops its trials, refits the best finished one on the cluster and writes a CANCELLED outcome beside the model.

The head runs here in a thread against a real Dask scheduler on loopback, with a folder area's credential
(``tests/test_vmcluster_head.py``'s set-up); the backend's side of the wait is the conformance suite's
(``test_a_cancelled_run_ends_with_the_best_finished_trials_model[vmcluster]``)."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest

from shared.backends.vmcluster import head
from shared.config import DRIVER_OUTCOME_ARTIFACT, MODEL_PREFIX
from shared.records import ExperimentRecord, ExperimentStatus, TrialState
from shared.store.compute import ComputeStore
from shared.store.local import LocalStore
from tests.control_plane import tiny_spec
from tests.test_vmcluster_head import _vm_spec, scheduler_port  # noqa: F401 (the fixture)


@pytest.mark.slow  # ~20 s: trials, then a refit
def test_a_cancelled_head_refits_the_best_finished_trial_before_its_outcome(
    store: LocalStore,
    scheduler_port: int,  # noqa: F811
) -> None:
    limits = {**tiny_spec()["limits"], "max_total_trials": 60, "max_concurrent_trials": 1}
    record = ExperimentRecord(id="exp-head-cancel", name="head", spec=_vm_spec(limits=limits), backend="vmcluster")
    store.create_experiment(record)
    credential = store.issue_compute_credential(record.id, timedelta(hours=1))
    area = ComputeStore.from_credential(credential)
    config = {"credential": json.loads(credential.to_json()), "scheduler_port": scheduler_port, "heartbeat_s": 0.2}
    exit_status: list[int] = []
    runner = threading.Thread(target=lambda: exit_status.append(head.run(config)), daemon=True)
    runner.start()
    deadline = time.monotonic() + 120
    while not any(t.state is TrialState.COMPLETED for t in area.list_trials(record.id)):
        assert time.monotonic() < deadline and runner.is_alive(), "no trial finished"
        time.sleep(0.1)
    current = store.get_experiment(record.id)
    store.update_experiment(current.model_copy(update={"status": ExperimentStatus.CANCELLING}))
    store.issue_compute_credential(record.id, timedelta(hours=1))  # republishes the record, CANCELLING now
    runner.join(timeout=180)
    assert not runner.is_alive() and exit_status == [0]
    outcome = json.loads(area.get_artifact(record.id, DRIVER_OUTCOME_ARTIFACT))
    assert outcome["status"] == "CANCELLED" and outcome["error"] is None, outcome
    trials = area.list_trials(record.id)
    assert len(trials) < 60 and not any(t.state is TrialState.RUNNING for t in trials)
    completed = [t for t in trials if t.state is TrialState.COMPLETED]
    best = max(completed, key=lambda t: t.value or 0.0)
    assert outcome["best"]["number"] == best.number
    metrics = json.loads(area.get_artifact(record.id, f"{MODEL_PREFIX}metrics.json"))
    assert metrics["cross_validation"]["trial"] == best.number
    assert metrics["cross_validation"]["value"] == best.value
