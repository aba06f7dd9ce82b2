"""The spec's sections other than the search space: dataset, trial, sampling, early termination, limits, objective."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, field_validator, model_validator

from gpu_jobs.builtin import BUILTIN_TARGETS
from gpu_jobs.metrics import MEASURED_METRICS, METRIC_ALIASES, METRICS, TASK_METRICS, Task
from gpu_jobs.params import HYPERPARAMETERS, MAX_REPORT_EVERY, Fidelity, ModelName
from shared.spec.bounds import MAX_RUN_SECONDS, MAX_SEARCH_SPACE
from shared.spec.errors import Loc, Problems, SpecModel, did_you_mean, echo, fail
from shared.spec.objectives import MAX_CONSTRAINTS, MAX_OBJECTIVES, Constraint, ObjectiveTerm
from shared.spec.pruning import (  # noqa: F401 (re-exported: the section's models)
    BanditPolicy,
    HyperbandPolicy,
    MedianStoppingPolicy,
    PatientPolicy,
    SuccessiveHalvingPolicy,
    ThresholdPolicy,
    TruncationSelectionPolicy,
    WilcoxonPolicy,
)
from shared.spec.search_space import check_value
from shared.spec.search_table import SAMPLERS, EarlyTermination  # noqa: F401 (re-exported)

BUILTIN_DATASETS: tuple[str, ...] = tuple(BUILTIN_TARGETS)
MAX_FEATURES = 10_000
"""At most this many columns named in ``dataset.features``."""
"""Datasets bundled with the project, addressed as ``builtin://<name>``."""
URI_SCHEMES: tuple[str, ...] = ("builtin", "file", "abfs", "abfss", "az", "https", "http", "azureml")
"""Schemes a dataset URI may use; a URI without a scheme is a local path (or ``azureml:<name>:<version>``).
A hosted deployment narrows them (:mod:`shared.spec.policy`)."""

_AZUREML_WS = r"azureml://subscriptions/[^/]+/resource[gG]roups/[^/]+/(?:providers/Microsoft\.MachineLearningServices/)?workspaces/[^/]+"
AZUREML_URI_FORMS: dict[str, re.Pattern[str]] = {
    "datastore": re.compile(r"^azureml://datastores/(?P<datastore>[^/]+)/paths/(?P<path>.+)$"),
    "datastore (long form)": re.compile(rf"^{_AZUREML_WS}/datastores/(?P<datastore>[^/]+)/paths/(?P<path>.+)$"),
    "data asset": re.compile(
        r"^azureml:(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?::(?P<version>[A-Za-z0-9._-]+)|@latest)$"
    ),
    "data asset (long form)": re.compile(rf"^{_AZUREML_WS}/data/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$"),
}
"""AzureML data a ``dataset.uri`` may name (read by the ``azureml`` backend only)."""


def azureml_uri_form(uri: str) -> tuple[str, dict[str, str]] | None:
    """``(form, parts)`` of an AzureML data URI, None for any other URI; ValueError for a malformed one."""
    if not uri.lower().startswith("azureml:"):
        return None
    for form, pattern in AZUREML_URI_FORMS.items():
        match = pattern.match(uri)
        if match:
            return form, {k: v for k, v in match.groupdict().items() if v is not None}
    raise ValueError(
        f"malformed AzureML data URI {uri!r}: expected azureml://datastores/<datastore>/paths/<path>, "
        "azureml:<data asset>:<version> (or @latest), or azureml://subscriptions/<id>/resourcegroups/<rg>/"
        "workspaces/<ws>/datastores/<datastore>/paths/<path> or .../data/<name>/versions/<version>"
    )


class DatasetSpec(SpecModel):
    """Where the table is, which column is the target, and the task it poses."""

    uri: str = Field(
        min_length=1,
        max_length=2048,
        description="builtin://nycflights13, abfs(s)://, az://, https:// or AzureML data (azureml://datastores/..., "
        "azureml:<name>:<version>; azureml backend only); outside a hosted deployment also a local path, file:// "
        "or http://",
    )
    target: str = Field(min_length=1, description="the target column (classes of any type, or a number)")
    task: Literal["auto", "binary", "multiclass", "regression"] = Field(
        default="auto",
        description="auto: inferred from the target before any trial (a numeric column of non-whole numbers or of "
        "more than 20 whole numbers is a regression; other columns pose classes: 2 binary, more multiclass)",
    )
    features: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_FEATURES,
        description="the feature columns, in order (None: every column but the target); leave out what leaks the "
        "target (a total that includes it, anything known only afterwards)",
    )
    format: Literal["csv", "parquet"] | None = Field(default=None, description="None: from the extension")
    max_rows: int | None = Field(
        default=None, gt=0, description="keep a seeded random sample of this many rows (quick runs)"
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, uri: str) -> str:
        if re.search(r"[\x00-\x1f\x7f]", uri):
            raise ValueError("the URI contains control characters (a newline?): percent-encode them")
        if azureml_uri_form(uri) is not None:  # checked whole there; the backend rule is the spec's
            return uri
        match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", uri)
        if match is None:
            return uri  # a local path
        scheme, rest = match.group(1).lower(), match.group(2)
        if scheme not in URI_SCHEMES:
            raise ValueError(
                f"unsupported URI scheme {scheme!r}: expected a local path or one of "
                + ", ".join(f"{s}://" for s in URI_SCHEMES)
            )
        if scheme == "builtin" and rest not in BUILTIN_DATASETS:
            raise ValueError(
                f"unknown builtin dataset {echo(rest)}: expected one of "
                + ", ".join(f"builtin://{name}" for name in BUILTIN_DATASETS)
            )
        try:
            urlsplit(uri).port  # noqa: B018 (parses the netloc: an unclosed "[" or a bad port raises)
        except ValueError as exc:
            raise ValueError(f"malformed URL: {exc}") from None
        credential = _credential_in(uri)
        if credential:
            raise ValueError(
                f"the URI carries a credential ({credential}): a spec is stored and shown (/study, the API), so "
                "it never holds one; the compute reads the data with its own identity"
            )
        return uri

    @model_validator(mode="after")
    def _builtin_target(self) -> DatasetSpec:
        """A built-in table's targets are known: check the target and the task here, not on the compute."""
        known = self.builtin_targets()
        if known is None:
            return self
        if self.target not in known:
            expected = ", ".join(f"{name} ({task})" for name, task in known.items())
            fail([(("target",), f"{self.uri} has the targets {expected}, not {echo(self.target)}")], "DatasetSpec")
        if self.task not in ("auto", known[self.target]):
            fail(
                [(("task",), f"{self.target} of {self.uri} is a {known[self.target]} target, not {self.task}")],
                "DatasetSpec",
            )
        return self

    @field_validator("features")
    @classmethod
    def _features(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return None
        for name in names:
            if not name or "," in name or len(name) > 256:
                raise ValueError(f"not a column name: {echo(name)} (1-256 characters, no comma)")
        if len(set(names)) != len(names):
            raise ValueError("a column is named twice")
        return names

    @model_validator(mode="after")
    def _target_not_a_feature(self) -> DatasetSpec:
        if self.features is not None and self.target in self.features:
            fail([(("features",), f"the target {echo(self.target)} cannot also be a feature")], "DatasetSpec")
        return self

    def feature_columns(self) -> tuple[str, ...] | None:
        """``features`` as a tuple (what trials take), or None for every column but the target."""
        return None if self.features is None else tuple(self.features)

    def builtin_targets(self) -> dict[str, Task] | None:
        """The targets of a ``builtin://`` table and their tasks; None for any other URI."""
        match = re.match(r"^builtin://(.*)$", self.uri, re.IGNORECASE)
        return BUILTIN_TARGETS.get(match.group(1).rstrip("/")) if match else None

    def known_task(self) -> Task | None:
        """The task when it is known before reading the data: stated, or a built-in table's; None for auto."""
        if self.task != "auto":
            return self.task
        known = self.builtin_targets()
        return known.get(self.target) if known else None


def _credential_in(uri: str) -> str | None:
    """What credential a URL (one that parses) holds: a password, or a SAS (its ``sig`` parameter), or None."""
    parts = urlsplit(uri)
    if parts.password is not None:
        return "a password"
    if any(key.lower() == "sig" for key, _ in parse_qsl(parts.query, keep_blank_values=True)):
        return "a SAS token: sig=..."
    return None


class TrialSpec(SpecModel):
    """What one trial trains: the model, its fixed hyperparameters, CV folds and engine."""

    model: ModelName
    cv_folds: int = Field(default=5, ge=2, le=20)
    params: dict[str, Any] = Field(
        default_factory=dict,
        max_length=MAX_SEARCH_SPACE,
        description="fixed hyperparameters (gpu_jobs.params names and ranges)",
    )
    engine: Literal["auto", "gpu", "cpu"] = "auto"
    report_every: int | None = Field(
        default=None,
        ge=1,
        le=MAX_REPORT_EVERY,
        description="train the folds in lockstep and report the running metric every this many boosting rounds "
        "(xgboost) or trees (random_forest; where the engine cannot add trees, cuML, the forest is refit on a "
        "growing share of the rows): steps for pruners finer than a fold (gpu_jobs/steps.py). None: once per "
        "fold, the step AzureML's policies evaluate (local and vmcluster backends only)",
    )
    fidelity: Fidelity = Field(
        default="rounds",
        description="what a step grows (gpu_jobs/steps.py). rounds: boosting rounds or trees so far. rows: the whole "
        "model, every round or tree, refit on a growing nested share of each fold's training rows, report_every "
        "percent first, then the rung policy's reduction_factor (else 2) times more up to 100: ranks trials by "
        "where they end, not by how fast they learn (needs report_every at most 100)",
    )

    @model_validator(mode="after")
    def _params(self) -> TrialSpec:
        table = HYPERPARAMETERS[self.model]
        problems = Problems()
        checked: dict[str, float | int] = {}
        for name, value in self.params.items():
            hp = table.get(name)
            if hp is None:
                problems.add(
                    ("params", name),
                    f"{self.model} has no hyperparameter {echo(name)}{did_you_mean(name, table)}; "
                    f"expected one of: {', '.join(table)}",
                )
                continue
            try:
                checked[name] = check_value(value, hp)
            except ValueError as exc:
                problems.add(("params", name), str(exc))
        if self.fidelity == "rows" and self.report_every is None:
            problems.add(("fidelity",), "rows refits in steps of percent of the rows: set report_every (the first)")
        elif self.fidelity == "rows" and (self.report_every or 0) > 100:
            why = "with fidelity rows a step is a percent of the rows"
            problems.add(("report_every",), f"{why}: at most 100, got {self.report_every}")
        problems.fail("TrialSpec")
        self.params = checked
        return self


class SamplingAlgorithm(SpecModel):
    """How trials are picked. ``rule: sobol`` (random only) draws a scrambled Sobol sequence."""

    type: str = Field(
        default="random",
        json_schema_extra={"enum": list(SAMPLERS)},
        description="one of shared.spec.search_table.SAMPLERS",
    )
    seed: int | None = Field(default=None, ge=0, lt=2**32, description="None: not reproducible")
    rule: Literal["random", "sobol", "halton"] | None = Field(
        default=None, description="random: random | sobol (AzureML's); qmc: sobol (default) | halton"
    )
    startup_trials: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="tpe, bayesian, gp: random trials before the model steers; None: Optuna's 10 (most of a short "
        "run's trials)",
    )

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in SAMPLERS:
            raise ValueError(f"unknown sampling algorithm {echo(value)}: expected one of {', '.join(SAMPLERS)}")
        return value

    @model_validator(mode="after")
    def _rule(self) -> SamplingAlgorithm:
        rules = SAMPLERS[self.type].rules
        if self.rule is not None and self.rule not in rules:
            takes = f"takes rule {' or '.join(rules)}" if rules else "takes no rule"
            fail([(("rule",), f"{self.type} sampling {takes}, not {self.rule}")])
        if self.startup_trials is not None and SAMPLERS[self.type].startup_trials is None:
            takes = ", ".join(name for name, entry in SAMPLERS.items() if entry.startup_trials is not None)
            fail([(("startup_trials",), f"{self.type} sampling has no startup trials to set (only {takes} have)")])
        return self


class Terminator(SpecModel):
    """Optuna's terminator (``RegretBoundEvaluator`` against ``CrossValidationErrorEvaluator``)."""

    min_trials: int = Field(default=20, ge=2, le=1000, description="completed trials before it may stop the run")


class Limits(SpecModel):
    """Budget: trials, concurrency, time (seconds) and money (USD)."""

    max_total_trials: int = Field(default=20, ge=1, le=10_000)
    max_concurrent_trials: int = Field(default=2, ge=1, le=1000)
    timeout: int | None = Field(
        default=None,
        gt=0,
        le=MAX_RUN_SECONDS,
        description="seconds for the whole experiment; at most the compute credential's lifetime less its margin",
    )
    trial_timeout: int | None = Field(default=None, gt=0, le=MAX_RUN_SECONDS, description="seconds for one trial")
    max_cost: float | None = Field(
        default=None,
        gt=0,
        description="USD: no trial starts that would take the estimated spend past it; the run stops at it",
    )
    target_value: float | None = Field(
        default=None,
        description="stop starting trials once a trial's primary metric reaches this (>= when maximizing, <= "
        "when minimizing); running trials finish (local and vmcluster backends)",
    )
    no_improvement_trials: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="stop starting trials once this many trials in a row ended without a better best (local and "
        "vmcluster backends)",
    )
    terminator: Terminator | None = Field(
        default=None,
        description="Optuna's terminator: stop once the estimated regret bound falls below the best trial's "
        "cross-validation noise (PyTorch where the driver runs; local and vmcluster backends)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Limits:
        errors: list[tuple[Loc, str]] = []
        if self.max_concurrent_trials > self.max_total_trials:
            errors.append(
                (
                    ("max_concurrent_trials",),
                    f"max_concurrent_trials ({self.max_concurrent_trials}) exceeds "
                    f"max_total_trials ({self.max_total_trials})",
                )
            )
        if self.timeout is not None and self.trial_timeout is not None and self.trial_timeout > self.timeout:
            errors.append(
                (
                    ("trial_timeout",),
                    f"trial_timeout ({self.trial_timeout} s) exceeds the experiment timeout ({self.timeout} s)",
                )
            )
        fail(errors, "Limits")
        return self


class Objective(SpecModel):
    """The metric trials are ranked by. ``goal`` defaults to the metric's natural direction."""

    primary_metric: str = "accuracy"
    goal: Literal["maximize", "minimize"]
    also: list[ObjectiveTerm] = Field(
        default_factory=list,
        max_length=MAX_OBJECTIVES - 1,
        description="more objectives after primary_metric (a Pareto front; no early termination): the task's "
        "metrics or model_size_mb, predict_ms_per_1000_rows (measured by the trial)",
    )
    constraints: list[Constraint] = Field(
        default_factory=list,
        max_length=MAX_CONSTRAINTS,
        description="bounds on metrics, e.g. {metric: model_size_mb, max: 50}: a trial outside one is infeasible",
    )

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: Any) -> Any:
        """Accept AzureML's capitalized spellings (``Accuracy``, ``Maximize``) and longer metric names
        (``r2_score``); default the goal."""
        if isinstance(data, dict):
            data = dict(data)
            metric = data.get("primary_metric", "accuracy")
            if isinstance(metric, str):
                metric = metric.lower()
                data["primary_metric"] = metric = METRIC_ALIASES.get(metric, metric)
            if isinstance(data.get("goal"), str):
                data["goal"] = data["goal"].lower()
            elif data.get("goal") is None:
                data["goal"] = METRICS.get(metric, "maximize") if isinstance(metric, str) else "maximize"
        return data

    @field_validator("primary_metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in METRICS:
            by_task = "; ".join(f"{task}: {', '.join(names)}" for task, names in TASK_METRICS.items())
            raise ValueError(f"unknown metric {echo(metric)}: expected one of ({by_task})")
        return metric

    @model_validator(mode="after")
    def _direction(self) -> Objective:
        natural = METRICS[self.primary_metric]
        if self.goal != natural:
            better = "higher" if natural == "maximize" else "lower"
            fail(
                [
                    (
                        ("goal",),
                        f"{self.primary_metric} must be {natural}d ({better} is better); "
                        f"goal {self.goal} would pick the worst trial as the best",
                    )
                ],
                "Objective",
            )
        names = [self.primary_metric] + [term.metric for term in self.also]
        for index, term in enumerate(self.also):
            if names.count(term.metric) > 1:
                fail([(("also", index, "metric"), f"{term.metric} is already an objective")], "Objective")
        return self

    @property
    def metrics(self) -> list[str]:
        """Every objective's metric, the primary first."""
        return [self.primary_metric] + [term.metric for term in self.also]

    @property
    def directions(self) -> list[Literal["maximize", "minimize"]]:
        return [self.goal] + [term.goal or "minimize" for term in self.also]

    @property
    def multi(self) -> bool:
        return bool(self.also)

    @property
    def measured(self) -> bool:
        """Whether an objective or constraint names what the trial measures of its model."""
        named = self.metrics + [c.metric for c in self.constraints]
        return any(name in MEASURED_METRICS for name in named)


def default_objective(task: Task = "binary") -> Objective:
    """The objective of a spec that names none: the task's first metric (accuracy; rmse for a regression)."""
    metric = next(iter(TASK_METRICS[task]))
    return Objective(primary_metric=metric, goal=METRICS[metric])


class RegisterModel(SpecModel):
    """Register the best model in the AzureML workspace's model registry when the experiment completes."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$",
        description="the registered model's name (AzureML asset name: letters, digits, '.', '_', '-')",
    )
    tags: dict[str, str] = Field(default_factory=dict, description="tags on the registered model version")


MAX_FRONT_MODELS = 10
"""``output.front_models`` at most this: each is a refit on all rows after the run and up to a model's size
(1 GiB) in the experiment's storage."""


class OutputSpec(SpecModel):
    """What the experiment leaves behind besides its artifacts."""

    register_model: RegisterModel | None = Field(
        default=None, description="register the best model (an MLflow model) in the AzureML workspace (azureml)"
    )
    front_models: int = Field(
        default=5,
        ge=1,
        le=MAX_FRONT_MODELS,
        description="with several objectives: the Pareto front members whose models the run keeps, the best model "
        "included (model/); the others, next in the front's order (best primary metric first), are refit on all "
        "rows under front-models/<number>/ after the run (none after a cancel, none past limits.max_cost)",
    )


MAX_WARM_BEST = 100
"""``warm_start.best`` at most this; also the most trials a warm start carries over (the best ones)."""


class WarmStart(SpecModel):
    """Start from a finished experiment's trials (read through the store, at submit, as the API reads them)."""

    experiment: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        description="a finished experiment's id, visible to the submitter (a missing, unseen or unfinished one is "
        "a 422 at warm_start.experiment)",
    )
    best: int = Field(
        default=10,
        ge=1,
        le=MAX_WARM_BEST,
        description="where the search space (or model or metric) changed: this many of its best configurations are "
        "run first; on the same space its best completed trials (up to 100) seed the sampler instead",
    )
