"""The AzureML data check: one command job on the cluster before the sweep; bad data fails the experiment once,
before any sweep job exists; a hostile verdict harms only its experiment; redelivered steps submit nothing twice.

The workspace is ``FakeWorkspace`` (a FAKE of ``AzureMLClient``: a live workspace is unreachable here), but the
check itself is real: the command the backend built is run by bash, with the real ``gpu_jobs.check_job`` on
real files, and what it wrote is what the backend reads. The same run through the real azure-ai-ml client, with
the stand-in's node running the uploaded code, is at the end.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from azure.ai.ml.entities import Command, Job
from azure.ai.ml.sweep import SweepJob
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import handlers
from shared.backends.azureml import CHECK_OUTPUT, AzureMLBackend, check_job_name_for, parse_verdict
from shared.backends.azureml.check_job import MAX_VERDICT_BYTES
from shared.backends.outcome import read_data_check
from shared.context import Context
from shared.records import ExperimentStatus
from tests.fakes.azureml import CHECK_JOB, EXP, JOB, PASSED, FakeWorkspace
from tests.test_azureml import make_spec

pytestmark = [
    pytest.mark.filterwarnings("ignore:The `ordered` `class Meta` option is deprecated"),
    pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated"),
]
CPU = {"model": "random_forest", "cv_folds": 3, "params": {"n_bins": 16}, "engine": "cpu"}
LABELS = ["label-alpha", "label-beta", "label-gamma"]


def three_class_table(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    path = folder / "three.csv"
    pd.DataFrame({"a": rng.normal(size=90), "b": rng.normal(size=90), "y": np.repeat(LABELS, 30)}).to_csv(
        path, index=False
    )
    return path


def run_node(job: Job | Command, workdir: Path) -> dict[str, bytes]:
    """Run the check command as the node would (outputs substituted, the data input mounted at its path,
    ``python`` this interpreter); the files its ``check`` output holds afterwards."""
    assert isinstance(job, Command)
    output = workdir / "check-output"
    output.mkdir(parents=True)
    line = str(job.command).replace(f"${{{{outputs.{CHECK_OUTPUT}}}}}", str(output))
    if "data" in (job.inputs or {}):
        line = line.replace("${{inputs.data}}", str(job.inputs["data"].path))
    shims = workdir / "bin"
    shims.mkdir()
    (shims / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (shims / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return {p.name: p.read_bytes() for p in output.iterdir()}


def step(ctx: Context) -> str:
    (message,) = ctx.events.receive(1)
    ctx.events.delete(message)
    return handlers.handle_event(ctx, message.body)


def started(ctx: Context, fake: FakeWorkspace, spec: Any) -> None:
    """Submit ``spec`` through the state machine up to its data check job (left Queued)."""
    fake.check_verdict = None
    ctx.backends["azureml"] = AzureMLBackend(ctx.store, ctx.settings, client_factory=lambda _: fake)
    handlers.submit_experiment(ctx, spec, experiment_id=EXP)
    assert [step(ctx), step(ctx)] == ["provisioned", "submitted"]
    assert step(ctx) == "running", "the check has not run: the poll waits"
    assert [type(job) for job in fake.submitted] == [Command]


def node_writes(fake: FakeWorkspace, files: dict[str, bytes], status: str = "Completed") -> None:
    fake.outputs[(CHECK_JOB, CHECK_OUTPUT)] = files
    fake.set_status(CHECK_JOB, status)


def failed_once(ctx: Context, fake: FakeWorkspace) -> str:
    """The poll fails the run, teardown follows; no sweep job was ever submitted; the error."""
    assert step(ctx) == "failed"
    assert step(ctx) == "torn down"
    record = ctx.store.get_experiment(EXP)
    assert record.status is ExperimentStatus.FAILED and record.error
    assert [c for c in fake.calls if c[0] == "create"] == [("create", CHECK_JOB)], "no sweep job exists"
    assert JOB not in fake.jobs and ctx.store.list_trials(EXP) == [] and record.trials_done == 0
    assert read_data_check(ctx.store, EXP) is None
    return record.error


# ------------------------------------------------------------------------------------------ the real check
@pytest.mark.parametrize("case", ["wrong target", "missing file", "three classes under binary"])
def test_bad_data_fails_the_experiment_once_before_any_sweep(ctx: Context, tmp_path: Path, case: str) -> None:
    dataset: dict[str, Any] = {
        "wrong target": {"uri": str(three_class_table(tmp_path)), "target": "no_such_column"},
        "missing file": {"uri": str(tmp_path / "gone.parquet"), "target": "y"},
        "three classes under binary": {"uri": str(three_class_table(tmp_path)), "target": "y", "task": "binary"},
    }[case]
    fake = FakeWorkspace()
    started(ctx, fake, make_spec(dataset=dataset, trial=CPU))
    node_writes(fake, run_node(fake.submitted[0], tmp_path / "node"))
    error = failed_once(ctx, fake)
    expected = {
        "wrong target": "target column 'no_such_column' not found",
        "missing file": "data not found",
        "three classes under binary": "3 distinct values",
    }
    assert error.startswith("data check failed: ") and expected[case] in error, error
    assert not any(label in error for label in LABELS), "the error echoes no data value"
    assert "np." not in error


def test_good_data_proceeds_to_the_sweep_and_records_what_the_check_learned(ctx: Context, tmp_path: Path) -> None:
    fake = FakeWorkspace()
    spec = make_spec(
        dataset={"uri": str(three_class_table(tmp_path)), "target": "y"},
        trial=CPU,
        objective={"primary_metric": "accuracy", "goal": "maximize"},
    )
    started(ctx, fake, spec)
    node_writes(fake, run_node(fake.submitted[0], tmp_path / "node"))
    assert step(ctx) == "running"
    assert [c for c in fake.calls if c[0] == "create"] == [("create", CHECK_JOB), ("create", JOB)]
    record = ctx.store.get_experiment(EXP)
    assert record.status is ExperimentStatus.RUNNING and record.backend_state["job_name"] == JOB
    check = read_data_check(ctx.store, EXP)
    assert check is not None and (check.task, check.classes, check.rows) == ("multiclass", 3, 90)
    check_job, sweep = fake.submitted
    assert isinstance(sweep, SweepJob) and isinstance(check_job, Command) and sweep.trial is not None
    checked, trained = (getattr(job.inputs["data"], "path", None) for job in (check_job, sweep.trial))
    assert checked == trained == spec.dataset.uri, "the check reads what the trials will"


# ------------------------------------------------------------------------------------------ hostile verdicts
SECRET = "s3cr3t-from-the-node"
HOSTILE: dict[str, dict[str, bytes]] = {
    "oversized": {"data_check.json": b" " * MAX_VERDICT_BYTES + PASSED},
    "not json": {"data_check.json": f"<html>{SECRET}".encode()},
    "a list": {"data_check.json": b"[1, 2, 3]"},
    "unknown status": {"data_check.json": json.dumps({"status": "ok", "check": SECRET}).encode()},
    "an extra key": {"data_check.json": PASSED[:-1] + json.dumps({"x": SECRET}).encode()[1:].replace(b"{", b", ", 1)},
    "negative rows": {"data_check.json": PASSED.replace(b'"rows": 1000', b'"rows": -5')},
    "a float for classes": {"data_check.json": PASSED.replace(b'"classes": 2', b'"classes": 2.5')},
    "an extra report field": {
        "data_check.json": PASSED.replace(b'"rows": 1000', f'"rows": 1000, "x": "{SECRET}"'.encode())
    },
    "an empty reason": {"data_check.json": b'{"status": "failed", "reason": ""}'},
    "no verdict": {"other.txt": b"hello"},
    "nothing": {},
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_verdict_fails_only_its_experiment_with_a_reason(ctx: Context, case: str) -> None:
    fake = FakeWorkspace()
    started(ctx, fake, make_spec())
    node_writes(fake, HOSTILE[case])
    error = failed_once(ctx, fake)
    assert "data check" in error and SECRET not in error and len(error) < 1000, error


def test_a_long_reason_is_clipped(ctx: Context) -> None:
    fake = FakeWorkspace()
    started(ctx, fake, make_spec())
    node_writes(fake, {"data_check.json": json.dumps({"status": "failed", "reason": "x " * 20_000}).encode()})
    error = failed_once(ctx, fake)
    assert error.startswith("data check failed: x x") and len(error) <= 4200


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048) | st.from_regex(rb'\{"status": "(passed|failed)".{0,80}\}', fullmatch=True))
def test_any_bytes_are_a_report_or_an_error_never_a_crash(data: bytes) -> None:
    verdict = parse_verdict(data)
    assert (verdict.report is None) != (verdict.error is None)


@pytest.mark.parametrize("status", ["Failed", "Canceled"])
def test_a_check_job_that_ends_without_a_verdict_fails_the_run(ctx: Context, status: str) -> None:
    fake = FakeWorkspace()
    started(ctx, fake, make_spec())
    node_writes(fake, {}, status)
    error = failed_once(ctx, fake)
    assert f"data check job {CHECK_JOB} ended {status}" in error and "ml.azure.com" in error


def test_a_check_job_gone_from_the_workspace_fails_the_run(ctx: Context) -> None:
    fake = FakeWorkspace()
    started(ctx, fake, make_spec())
    del fake.jobs[CHECK_JOB]
    assert "gone from the workspace" in failed_once(ctx, fake)


@pytest.mark.parametrize("check_ends", ["Canceled", "Completed"])
def test_cancel_during_the_check_cancels_its_job_and_submits_no_sweep(ctx: Context, check_ends: str) -> None:
    """Cancelled while the check runs: its job is cancelled; whether it then ends Canceled or (too late to stop)
    Completed with a passing verdict, the experiment ends CANCELLED and no sweep is ever submitted."""
    fake = FakeWorkspace()
    started(ctx, fake, make_spec())
    handlers.request_cancel(ctx, EXP)
    assert [step(ctx), step(ctx)] == ["stale", "waiting for the model"]  # the poll's next message, then CANCEL
    assert ("cancel", CHECK_JOB) in fake.calls and fake.jobs[CHECK_JOB].status == "CancelRequested"
    assert step(ctx) == "waiting for the model"
    node_writes(fake, {"data_check.json": PASSED} if check_ends == "Completed" else {}, check_ends)
    outcomes = [step(ctx)]
    while outcomes[-1] != "torn down":
        outcomes.append(step(ctx))
        assert len(outcomes) < 5, outcomes
    record = ctx.store.get_experiment(EXP)
    assert record.status is ExperimentStatus.CANCELLED and record.no_model
    assert JOB not in fake.jobs and [c for c in fake.calls if c[0] == "create"] == [("create", CHECK_JOB)]


def test_a_redelivered_poll_submits_one_sweep(ctx: Context) -> None:
    """The poll that submitted the sweep lost its write: the redelivered one finds that sweep."""
    fake = FakeWorkspace()
    started(ctx, fake, make_spec())
    node_writes(fake, {"data_check.json": PASSED})
    backend = ctx.backends["azureml"]
    record = ctx.store.get_experiment(EXP)
    first, second = backend.poll(record), backend.poll(record)
    assert first.updates == second.updates and first.updates["job_name"] == JOB
    assert [c for c in fake.calls if c[0] == "create"] == [("create", CHECK_JOB), ("create", JOB)]
    assert check_job_name_for(EXP) == CHECK_JOB != JOB
