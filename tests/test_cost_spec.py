"""Sizes in the spec: current defaults, retired sizes rejected with their replacement, unknown sizes allowed."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from shared.api import create_api
from shared.backends.azureml.section import AZUREML_DEFAULT_VM_SIZE
from shared.backends.vmcluster.section import VMCLUSTER_DEFAULT_VM_SIZE
from shared.config import Settings
from shared.context import set_context
from shared.cost.catalogue import load_catalogue
from shared.spec import SpecError, load_spec
from tests.control_plane import local_context, tiny_spec

VMCLUSTER = {"backend": "vmcluster", "location": "eastus", "resource_group": "rg"}


def errors_of(document) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        load_spec(document)
    return {e["loc"]: e["msg"] for e in caught.value.errors}


def test_defaults_are_sizes_azure_sells_and_we_can_price():
    catalogue = load_catalogue("")
    azureml = load_spec(tiny_spec(compute={"backend": "azureml"})).compute
    vmcluster = load_spec(tiny_spec(compute=VMCLUSTER)).compute
    assert (azureml.vm_size, vmcluster.vm_size) == (AZUREML_DEFAULT_VM_SIZE, VMCLUSTER_DEFAULT_VM_SIZE)
    for size in (azureml.vm_size, vmcluster.vm_size):
        assert catalogue.check(size).error is None and catalogue.price(size, "eastus") is not None


@pytest.mark.parametrize(
    ("compute", "loc", "replacement"),
    [
        ({"backend": "azureml", "vm_size": "Standard_NC6s_v3"}, "compute.vm_size", "Standard_NC24ads_A100_v4"),
        ({**VMCLUSTER, "vm_size": "Standard_NC12s_v3"}, "compute.vm_size", "Standard_NC48ads_A100_v4"),
        ({**VMCLUSTER, "scheduler_vm_size": "Standard_NC24s_v3"}, "compute.scheduler_vm_size", "NC96ads_A100"),
        ({"backend": "local", "equivalent_vm_size": "Standard_NV6"}, "compute.equivalent_vm_size", "NV36ads"),
    ],
)
def test_a_retired_size_is_rejected_naming_the_field_and_the_replacement(compute, loc, replacement):
    errors = errors_of(tiny_spec(compute=compute))
    assert loc in errors, errors
    assert "retired" in errors[loc] and replacement in errors[loc]


def test_an_unknown_size_is_allowed():
    spec = load_spec(tiny_spec(compute={**VMCLUSTER, "vm_size": "Standard_ND128isr_NEW_v9"}))
    assert spec.compute.vm_size == "Standard_ND128isr_NEW_v9"


def test_the_api_answers_a_retired_size_with_422_naming_compute_vm_size(tmp_path):
    set_context(local_context(tmp_path))
    try:
        document = tiny_spec(compute={"backend": "azureml", "vm_size": "Standard_NC6s_v3"})
        response = TestClient(create_api(settings=Settings.from_env()), base_url="http://localhost").post(
            "/api/experiments", json=document
        )
    finally:
        set_context(None)
    assert response.status_code == 422
    errors = {e["loc"]: e["msg"] for e in response.json()["errors"]}
    assert "Standard_NC24ads_A100_v4" in errors["compute.vm_size"]


@pytest.mark.parametrize("budget", [0, -5, -0.01])
def test_a_zero_or_negative_budget_is_rejected_naming_the_field(budget):
    document = tiny_spec(compute={"backend": "azureml"})
    document.setdefault("limits", {})["max_cost"] = budget
    assert "limits.max_cost" in errors_of(document)


@pytest.mark.parametrize(
    "compute",
    [
        {"backend": "local"},  # no equivalent Azure size named
        {**VMCLUSTER, "vm_size": "Standard_X1_v9"},  # unknown size: no price
        {"backend": "azureml", "vm_size": "Standard_NV6ads_A10_v5"},  # known, unpriced
    ],
)
def test_a_budget_with_no_priced_size_is_rejected_naming_the_field(compute):
    document = tiny_spec(compute=compute)
    document.setdefault("limits", {})["max_cost"] = 10
    errors = errors_of(document)
    assert "limits.max_cost" in errors and "price" in errors["limits.max_cost"]


def test_a_priced_budget_is_accepted():
    document = tiny_spec(compute={"backend": "local", "equivalent_vm_size": "Standard_NC4as_T4_v3"})
    document.setdefault("limits", {})["max_cost"] = 2.5
    assert load_spec(document).limits.max_cost == 2.5


def test_an_unknown_size_is_submitted_with_a_warning_in_its_history(tmp_path):
    from shared.handlers import submit_experiment

    ctx = local_context(tmp_path)
    spec = load_spec(tiny_spec(compute={**VMCLUSTER, "vm_size": "Standard_ND128isr_NEW_v9"}))
    record, _ = submit_experiment(ctx, spec)
    reason = record.history[0].reason
    assert reason.startswith("submitted; warning: Standard_ND128isr_NEW_v9 is not in the GPU size catalogue")
