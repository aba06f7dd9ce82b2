"""``rapids-hpo export ID --optuna-journal FILE``: Optuna loads the file and sees every trial as recorded."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys

import optuna
import pytest

from shared.dashboard.study import STATES, write_journal
from shared.hpo.search_space import suggest_params
from shared.records import ExperimentStatus, TrialState
from tests.control_plane import local_context
from tests.dashboard_data import make_experiment
from tests.test_end_to_end import ROOT, served

EXPERIMENT = "exp-20261130090000-cccccc"


def journal(path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def assert_same_trials(study: optuna.Study, records, spec) -> None:
    """Every field Optuna keeps matches the trial record it came from."""
    assert [t.number for t in study.trials] == [r.number for r in records]
    for frozen, record in zip(study.trials, records, strict=True):
        assert frozen.state is STATES[record.state]
        assert frozen.params == record.sampler_params
        fixed = optuna.trial.FixedTrial(record.sampler_params)
        assert suggest_params(fixed, spec) == record.params  # the same draw gives the same hyperparameters
        assert frozen.distributions == fixed.distributions
        assert frozen.intermediate_values == {int(k): v for k, v in record.intermediate.items()}
        if record.state is TrialState.COMPLETED:
            assert frozen.value == pytest.approx(record.value)
        else:
            assert frozen.value is None
        assert frozen.user_attrs["rapids_hpo_params"] == record.params
        assert frozen.user_attrs["rapids_hpo_attempt"] == record.attempt
        assert frozen.user_attrs["rapids_hpo_state"] == record.state.value
        if record.ended_at and record.state.finished:
            duration = (frozen.datetime_complete - frozen.datetime_start).total_seconds()
            assert math.isclose(duration, (record.ended_at - record.started_at).total_seconds(), abs_tol=1e-3)


def test_journal_file_loads_with_optuna_and_matches_every_trial(tmp_path):
    ctx = local_context(tmp_path)
    record = make_experiment(ctx.store, EXPERIMENT, trials=10, running=2, status=ExperimentStatus.RUNNING)
    records = ctx.store.list_trials(EXPERIMENT)
    path = tmp_path / "study.log"
    write_journal(str(path), record, records)
    study = optuna.load_study(study_name=EXPERIMENT, storage=journal(path))
    assert study.direction is optuna.study.StudyDirection.MAXIMIZE
    assert study.user_attrs["rapids_hpo_primary_metric"] == "accuracy"
    assert_same_trials(study, records, record.run_spec)
    assert {t.state for t in study.trials} == {
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.RUNNING,
    }
    assert study.best_trial.number == record.best.number and study.best_value == pytest.approx(record.best.value)
    # The export is a study Optuna can go on with: its sampler learns from the exported trials.
    study.sampler = optuna.samplers.TPESampler(seed=1)
    trial = study.ask(study.best_trial.distributions)
    assert set(trial.params) == set(study.best_trial.params) and trial.number == len(records)


def wsgi_get(app, path: str) -> tuple[str, bytes]:
    """One GET through a WSGI app, as a server would call it."""
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "0",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], body


def test_optuna_dashboard_opens_the_exported_file(tmp_path):
    """``optuna-dashboard FILE`` guesses the storage from the path the same way ``wsgi(str(path))`` does."""
    optuna_dashboard = pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is a dev requirement")
    ctx = local_context(tmp_path)
    record = make_experiment(ctx.store, EXPERIMENT, trials=8, status=ExperimentStatus.COMPLETED)
    path = tmp_path / "study.log"
    write_journal(str(path), record, ctx.store.list_trials(EXPERIMENT))
    app = optuna_dashboard.wsgi(str(path))
    status, body = wsgi_get(app, "/api/studies")
    assert status.startswith("200"), body[:500]
    studies = json.loads(body)["study_summaries"]
    assert [s["study_name"] for s in studies] == [EXPERIMENT]
    status, body = wsgi_get(app, f"/api/studies/{studies[0]['study_id']}")
    assert status.startswith("200"), body[:500]
    detail = json.loads(body)
    assert len(detail["trials"]) == 8
    assert {t["state"] for t in detail["trials"]} == {"Complete", "Pruned", "Fail"}
    pruned = next(t for t in detail["trials"] if t["state"] == "Pruned")
    assert len(pruned["intermediate_values"]) == 2  # stopped after its second fold


# Serves the API and runs the CLI as processes (~40 s under load); the export itself is the two tests above.
@pytest.mark.slow
def test_rapids_hpo_export_and_watch_against_a_served_api(tmp_path):
    ctx = local_context(tmp_path)
    record = make_experiment(ctx.store, EXPERIMENT, trials=6, status=ExperimentStatus.COMPLETED)
    path = tmp_path / "out.log"
    with served(tmp_path) as client:
        env = {**os.environ, "RAPIDS_HPO_API_URL": str(client.base_url), "PYTHONPATH": str(ROOT)}
        result = subprocess.run(
            [sys.executable, "-m", "shared.cli", "export", EXPERIMENT, "--optuna-journal", str(path)],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "6 trial(s)" in result.stdout
        again = subprocess.run(
            [sys.executable, "-m", "shared.cli", "export", EXPERIMENT, "--optuna-journal", str(path)],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert again.returncode == 2 and "exists" in again.stderr
        watched = subprocess.run(
            [sys.executable, "-m", "shared.cli", "watch", EXPERIMENT, "--interval", "0.1"],
            check=False,
            capture_output=True,
            text=True,
            env={**env, "COLUMNS": "200"},
            timeout=120,
        )
        assert watched.returncode == 0, watched.stderr  # COMPLETED: one frame, then exit 0
        assert "COMPLETED" in watched.stdout and "6/6 trials" in watched.stdout and "max_features" in watched.stdout
    study = optuna.load_study(study_name=EXPERIMENT, storage=journal(path))
    assert_same_trials(study, ctx.store.list_trials(EXPERIMENT), record.run_spec)
