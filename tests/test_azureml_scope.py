"""A hosted deployment's AzureML scope at intake (:mod:`shared.backends.azureml.scope`): a spec cannot choose the
workspace, a model name outside the deployment's prefix or an image off its pattern. Each is a 422 naming the
field, over the real API. The checks that need the workspace (whose cluster, whose model) are in
tests/test_azureml_workspace.py against the AzureML stand-in."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.api import create_api
from shared.backends.azureml.scope import DEFAULT_IMAGE_PATTERN, AzureMLScope, cluster_problem, model_problem
from shared.config import AzureMLSettings, Settings
from shared.context import set_context
from shared.spec import SpecError, SpecPolicy, validate_spec
from tests.control_plane import local_context
from tests.test_functions_worker import azureml_spec

HOSTED = SpecPolicy(hosted=True)


def refused(document: dict[str, Any]) -> dict[str, str]:
    """loc -> message of what hosted mode refuses in ``document``."""
    with pytest.raises(SpecError) as info:
        validate_spec(document, HOSTED)
    return {e["loc"]: e["msg"] for e in info.value.errors}


@pytest.mark.parametrize("field", ["subscription_id", "resource_group", "workspace"])
def test_the_workspace_is_the_deployments(field: str) -> None:
    document = azureml_spec(compute={"backend": "azureml", field: "someone-elses"})
    assert "own workspace" in refused(document)[f"compute.{field}"]
    validate_spec(document, SpecPolicy())  # a user's own machine may name any workspace


def test_model_names_stay_in_the_deployments_namespace() -> None:
    outside = azureml_spec(output={"register_model": {"name": "flights-rf"}})
    assert "rapids-hpo-" in refused(outside)["output.register_model.name"]
    validate_spec(azureml_spec(output={"register_model": {"name": "rapids-hpo-flights-rf"}}), HOSTED)


@pytest.mark.parametrize(
    "image",
    [
        "rapidsai/base:26.10-cuda12-py3.12",
        "docker.io/rapidsai/notebooks:26.10-cuda12-py3.12",
        "nvcr.io/nvidia/rapidsai/base:26.10-cuda12-py3.12",
    ],
)
def test_rapids_images_pass(image: str) -> None:
    validate_spec(azureml_spec(compute={"backend": "azureml", "environment_image": image}), HOSTED)


@pytest.mark.parametrize(
    "image",
    [
        "attacker/rapidsai:1",
        "evil.example/rapidsai/base:1",
        "docker.io.evil.example/rapidsai/base:1",
        "rapidsai/base:1\nFROM evil",
        "rapidsai/base",  # no tag: whatever "latest" becomes
        "myregistry.azurecr.io/rapidsai/base:1",
    ],
)
def test_other_images_are_refused(image: str) -> None:
    document = azureml_spec(compute={"backend": "azureml", "environment_image": image})
    assert "pattern" in refused(document)["compute.environment_image"]


@settings(max_examples=200, deadline=None)
@given(host=st.from_regex(r"[a-z0-9-]{1,12}(\.[a-z0-9-]{1,12}){1,3}", fullmatch=True), tag=st.text(min_size=1))
def test_no_other_registry_passes_the_default_pattern(host: str, tag: str) -> None:
    """Whatever the host and tag, only docker.io and nvcr.io/nvidia/rapidsai images match."""
    image = f"{host}/rapidsai/base:{tag}"
    matched = re.fullmatch(DEFAULT_IMAGE_PATTERN, image) is not None
    assert not matched or (host == "docker.io" and re.fullmatch(r"[A-Za-z0-9._-]+", tag))


def test_the_api_answers_422_naming_each_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    context = local_context(tmp_path)
    context.settings = replace(context.settings, hosted=True, azureml=AzureMLSettings(model_prefix="team-a-"))
    set_context(context)
    try:
        document = azureml_spec(
            compute={"backend": "azureml", "workspace": "other", "environment_image": "evil/img:1"},
            output={"register_model": {"name": "rapids-hpo-x"}},
        )
        answer = TestClient(create_api(settings=Settings.from_env()), base_url="http://localhost").post(
            "/api/experiments", json=document
        )
    finally:
        set_context(None)
    assert answer.status_code == 422, answer.text
    text = answer.text
    for loc in ("compute.workspace", "compute.environment_image", "output.register_model.name"):
        assert loc in text, loc
    assert "team-a-" in text  # the deployment's prefix, from its settings
    assert context.store.list_experiments()[0] == []  # nothing stored


def test_cluster_and_model_ownership_rules() -> None:
    scope = AzureMLScope(instance_id="st1", compute_allowlist=("shared-gpu",))
    assert cluster_problem("mine", {"rapids-hpo.instance": "st1"}, scope) is None
    assert cluster_problem("shared-gpu", {}, scope) is None
    assert "compute.compute_name" in (cluster_problem("theirs", {"rapids-hpo.instance": "st2"}, scope) or "")
    assert cluster_problem("mine", {"rapids-hpo.instance": ""}, AzureMLScope()) is not None  # no id: none is ours
    assert model_problem("m", [], scope) is None
    assert model_problem("m", [{"rapids-hpo.instance": "st1"}], scope) is None
    mixed = [{"rapids-hpo.instance": "st1"}, {"created-by": "rapids-hpo-control"}]
    assert "output.register_model.name" in (model_problem("m", mixed, scope) or "")
