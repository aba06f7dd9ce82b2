"""A cancelled AzureML experiment keeps its best model so far (issue 30), through the real azure-ai-ml client
against the local AzureML stand-in (``tests/azureml_server.py``: the sweep's statuses, its children's model
outputs in the Azurite-backed datastore, ``POST .../cancel`` moving it to CancelRequested then Canceled).

The state machine cancels the sweep, waits (CancelRequested is still running), and once AzureML reports it
Canceled, the best finished trial is refit once (a command job: trials only score, issue 26) and ``finalize``
downloads that refit's model output."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared import handlers
from shared.backends.azureml import MODEL_OUTPUT, AzureMLBackend, check_job_name_for, job_name_for
from shared.backends.azureml.refit_job import refit_job_name_for
from shared.handlers.cancelling import NO_TRIAL_FINISHED
from shared.records import ExperimentStatus, TrialState
from tests.azureml_server import AzureMLStandIn, Child
from tests.control_plane import local_context
from tests.test_azureml import make_spec
from tests.test_azureml_workspace import (  # noqa: F401 (fixture)
    MLMODEL,
    client_for,
    passed_check,
    step,
    trial,
    workspace,
)

pytestmark = [
    pytest.mark.azurite,
    pytest.mark.filterwarnings("ignore:The `ordered` `class Meta` option is deprecated"),
    pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated"),
]


def run_to_the_end(ctx) -> list[str]:
    outcomes = [step(ctx)]
    while outcomes[-1] != "torn down":
        outcomes.append(step(ctx))
        assert len(outcomes) < 10, outcomes
    return outcomes


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_a_cancelled_sweep_ends_cancelled_with_its_best_finished_trials_model(
    workspace: AzureMLStandIn,  # noqa: F811
    tmp_path: Path,
) -> None:
    ctx = local_context(tmp_path / "home", poll_seconds=0)
    ctx.backends["azureml"] = AzureMLBackend(ctx.store, ctx.settings, client_factory=lambda _: client_for(workspace))
    experiment_id = "exp-aml-1"  # the workspace helpers' trials are named after its job
    files = {"model.joblib": b"best so far", "mlflow/MLmodel": MLMODEL}
    done = trial(0, ["Completed"], {1: 0.8, 2: 0.83})
    worse = trial(1, ["Completed"], {1: 0.7})
    # Trials only score; once the cancelled sweep ended, the best finished one is refit (issue 26): its node.
    workspace.script_command_job(refit_job_name_for(experiment_id), ["Running", "Completed"], {MODEL_OUTPUT: files})
    running = trial(2, ["Running"], {1: 0.6})
    workspace.script(job_name_for(experiment_id), ["Running"], [(1, done), (1, worse), (1, running)])
    passed_check(workspace, check_job_name_for(experiment_id))  # the data check's node: the data fits
    handlers.submit_experiment(ctx, make_spec(), experiment_id=experiment_id)
    assert [step(ctx) for _ in range(4)] == ["provisioned", "submitted", "running", "running"]
    handlers.request_cancel(ctx, experiment_id)
    outcomes = run_to_the_end(ctx)
    assert outcomes[:2] == ["stale", "waiting for the model"], outcomes  # the overtaken poll; the sweep cancelled
    assert "cancelled" in outcomes
    record = ctx.store.get_experiment(experiment_id)
    assert record.status is ExperimentStatus.CANCELLED and record.no_model is None
    assert record.best is not None and (record.best.number, record.best.value) == (0, 0.83)
    assert ctx.store.get_artifact(experiment_id, f"{MODEL_OUTPUT}/model.joblib") == b"best so far"
    assert len(workspace.calls("POST", f"/jobs/{job_name_for(experiment_id)}/cancel")) == 1
    states = {t.number: t.state for t in ctx.store.list_trials(experiment_id)}
    assert states == {0: TrialState.COMPLETED, 1: TrialState.COMPLETED, 2: TrialState.CANCELLED}
    assert workspace.unrouted == []


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_a_sweep_cancelled_before_any_trial_finished_says_there_is_no_model(
    workspace: AzureMLStandIn,  # noqa: F811
    tmp_path: Path,
) -> None:
    ctx = local_context(tmp_path / "home", poll_seconds=0)
    ctx.backends["azureml"] = AzureMLBackend(ctx.store, ctx.settings, client_factory=lambda _: client_for(workspace))
    experiment_id = "exp-aml-2"
    job = job_name_for(experiment_id)
    workspace.script(job, ["Running"], [(1, Child(f"{job}_0", ["Running"]))])
    passed_check(workspace, check_job_name_for(experiment_id))  # the data check's node: the data fits
    handlers.submit_experiment(ctx, make_spec(), experiment_id=experiment_id)
    assert [step(ctx) for _ in range(4)] == ["provisioned", "submitted", "running", "running"]
    handlers.request_cancel(ctx, experiment_id)
    run_to_the_end(ctx)
    record = ctx.store.get_experiment(experiment_id)
    assert record.status is ExperimentStatus.CANCELLED and record.no_model == NO_TRIAL_FINISHED
    assert not ctx.store.list_artifacts(experiment_id, MODEL_OUTPUT)
