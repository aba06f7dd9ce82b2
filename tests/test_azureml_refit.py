"""Best-only refit on AzureML (issue 26): the sweep's trials only score; once it ended, the best trial is refit
once as a command job, and that job's model is the experiment's.

The workspace is ``FakeWorkspace`` (a FAKE of ``AzureMLClient``: a live workspace is unreachable here); the
refit command the backend built is run for real by bash with ``gpu_jobs.refit_job`` on the bundled data.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from azure.ai.ml.entities import Command

from shared.backends.azureml import MODEL_OUTPUT, AzureMLBackend, JobInfo
from shared.context import Context
from shared.ports import RunState
from shared.records import ExperimentRecord, ExperimentStatus
from tests.fakes.azureml import CHECK_JOB, EXP, JOB, REFIT_JOB, REFIT_MODEL, T0, FakeWorkspace, child, run
from tests.test_azureml import make_spec

pytestmark = [
    pytest.mark.filterwarnings("ignore:The `ordered` `class Meta` option is deprecated"),
    pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated"),
]


def ended_sweep(
    ctx: Context, fake: FakeWorkspace, status: str = "Completed", spec: dict[str, Any] | None = None
) -> ExperimentRecord:
    """A record whose check passed and whose sweep ended with two scored trials (trial 1 the best)."""
    record = ExperimentRecord(
        id=EXP, name="flights.rf", spec=make_spec(**(spec or {})).to_document(), backend="azureml",
        status=ExperimentStatus.RUNNING, backend_state={"kind": "azureml", "check_job": CHECK_JOB, "job_name": JOB},
    )  # fmt: skip
    record = ctx.store.create_experiment(record)
    draws = {
        f"{JOB}_0": json.dumps({"n_estimators": 20, "max_depth": 3.2, "max_features": 0.31}),
        f"{JOB}_1": json.dumps({"n_estimators": 50, "max_depth": 7.9, "max_features": 0.62}),
    }
    fake.jobs[JOB] = JobInfo(JOB, status, tags=draws, created_at=T0, modified_at=T0)
    fake.children[JOB] = [child(0, "Completed"), child(1, "Completed")]
    fake.runs[f"{JOB}_0"] = run({1: 0.7, 2: 0.71})
    fake.runs[f"{JOB}_1"] = run({1: 0.8, 2: 0.84})
    return record


def backend_for(ctx: Context, fake: FakeWorkspace) -> AzureMLBackend:
    return AzureMLBackend(ctx.store, ctx.settings, client_factory=lambda _: fake)


def with_updates(record: ExperimentRecord, updates: dict[str, object]) -> ExperimentRecord:
    return record.model_copy(update={"backend_state": {**record.backend_state, **updates}})


def creates(fake: FakeWorkspace) -> list[str]:
    return [name for what, name in fake.calls if what == "create"]


def test_the_best_trial_is_refit_once_after_the_sweep_and_its_model_is_stored(ctx: Context) -> None:
    fake = FakeWorkspace(refit_model=None)  # the refit job runs until the test ends it
    backend = backend_for(ctx, fake)
    record = ended_sweep(ctx, fake)
    waiting = backend.poll(record)
    assert waiting.state is RunState.RUNNING and "refit of trial 1" in (waiting.details.waiting_for or "")
    assert waiting.updates == {"refit_job": REFIT_JOB, "refit_trial": 1}
    assert backend.poll(record).updates == waiting.updates, "a redelivered poll finds the refit job"
    record = with_updates(record, waiting.updates)
    assert backend.poll(record).state is RunState.RUNNING and creates(fake) == [REFIT_JOB]
    (job,) = fake.submitted
    assert isinstance(job, Command) and str(job.command).startswith("python -m gpu_jobs.refit_job")
    assert "--n_estimators 50 " in str(job.command) and "--max_depth 8 " in str(job.command)
    assert list(job.outputs) == [MODEL_OUTPUT]

    fake.set_status(REFIT_JOB, "Completed")
    fake.outputs[(REFIT_JOB, MODEL_OUTPUT)] = dict(REFIT_MODEL)
    fake.outputs[(f"{JOB}_1", MODEL_OUTPUT)] = {"model.joblib": b"a trial's: never read"}
    assert backend.poll(record).state is RunState.SUCCEEDED
    handle = backend.finalize(record)
    assert handle["best_child"] == f"{JOB}_1" and handle["model_files"] == len(REFIT_MODEL)
    assert ctx.store.get_artifact(EXP, f"{MODEL_OUTPUT}/model.joblib") == REFIT_MODEL["model.joblib"]
    assert ("download", REFIT_JOB) in fake.calls and ("download", f"{JOB}_1") not in fake.calls


@pytest.mark.parametrize("ended", ["Failed", "Canceled"])
def test_a_refit_that_fails_fails_the_run_with_the_reason(ctx: Context, ended: str) -> None:
    fake = FakeWorkspace(refit_model=None)
    backend = backend_for(ctx, fake)
    record = ended_sweep(ctx, fake)
    record = with_updates(record, backend.poll(record).updates)
    fake.set_status(REFIT_JOB, ended)
    status = backend.poll(record)
    assert status.state is RunState.FAILED
    assert f"refit of the best trial (1, job {REFIT_JOB}) ended {ended}" in (status.error or "")


def test_a_cancelled_sweep_refits_its_best_finished_trial_and_ends_cancelled(ctx: Context) -> None:
    fake = FakeWorkspace()
    record = ended_sweep(ctx, fake, status="Canceled")
    status = backend_for(ctx, fake).poll(record)
    assert status.state is RunState.CANCELLED and creates(fake) == [REFIT_JOB]


def test_no_completed_trial_means_no_refit(ctx: Context) -> None:
    fake = FakeWorkspace()
    record = ended_sweep(ctx, fake)
    fake.children[JOB] = [replace(c, status="Failed") for c in fake.children[JOB]]
    assert backend_for(ctx, fake).poll(record).state is RunState.SUCCEEDED
    assert creates(fake) == [] and backend_for(ctx, fake).finalize(record) == {}


def test_teardown_cancels_a_refit_still_running(ctx: Context) -> None:
    fake = FakeWorkspace(refit_model=None)
    backend = backend_for(ctx, fake)
    record = ended_sweep(ctx, fake)
    record = with_updates(record, backend.poll(record).updates)
    backend.teardown(record)
    assert ("cancel", REFIT_JOB) in fake.calls


@pytest.mark.slow  # the refit command trains in a process of its own: 10 s at load 5; CI runs it
def test_the_refit_command_refits_the_best_parameters_on_all_rows(ctx: Context, tmp_path: Path) -> None:
    """The command the backend built, run by bash as the node would: the model files, the best trial's
    parameters, and the scores that chose them under ``cross_validation``."""
    fake = FakeWorkspace(refit_model=None)
    spec = {
        "dataset": {"uri": "builtin://nycflights13", "target": "ArrDelayBinary", "max_rows": 2000},
        "trial": {"model": "random_forest", "cv_folds": 2, "params": {"n_bins": 16}, "engine": "cpu"},
    }
    backend_for(ctx, fake).poll(ended_sweep(ctx, fake, spec=spec))
    (job,) = fake.submitted
    assert isinstance(job, Command)
    output = tmp_path / "model"
    line = str(job.command).replace(f"${{{{outputs.{MODEL_OUTPUT}}}}}", str(output))
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (shims / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["params"]["n_estimators"] == 50 and metrics["params"]["max_depth"] == 8
    assert metrics["rows"] == 2000 and metrics["cross_validation"]["trial"] == 1
    assert metrics["cross_validation"]["value"] == pytest.approx(0.84)
    assert (output / "model.joblib").is_file() and (output / "mlflow" / "MLmodel").is_file()
