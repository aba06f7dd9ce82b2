"""The whole experiment spec: :class:`ExperimentSpec` and its cross-section checks."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from gpu_jobs.metrics import POSITIVE_METRICS, metric_mismatch
from gpu_jobs.params import HYPERPARAMETERS
from shared.backends import DEFAULT_BACKEND, ComputeSpec, backends_where, default_section
from shared.compute_spec import Problem
from shared.spec.bounds import MAX_GRID_POINTS, MAX_SEARCH_SPACE, MAX_TAGS, numbers_problems
from shared.spec.errors import Problems, SpecModel, did_you_mean, echo, fail
from shared.spec.objectives import objectives_problems
from shared.spec.pruning import BanditPolicy
from shared.spec.search_space import SAMPLING_TYPES, Choice, Distribution, check_distribution
from shared.spec.search_table import EarlyTermination, policy_problems
from shared.spec.sections import (
    DatasetSpec,
    Limits,
    Objective,
    OutputSpec,
    SamplingAlgorithm,
    TrialSpec,
    WarmStart,
    azureml_uri_form,
    default_objective,
)


class ExperimentSpec(SpecModel):
    """A whole experiment. Build it with :func:`load_spec` to get :class:`SpecError` on bad input.

    Its validators check the spec's shape only, and depend on nothing that changes under a stored spec; the
    rules of the world now (the size catalogue, hosted mode) are :func:`shared.spec.admit`'s, at the edge."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str | None = Field(default=None, max_length=4096)
    tags: dict[Annotated[str, Field(min_length=1, max_length=512)], Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict, max_length=MAX_TAGS, description="at most 50; names up to 512, values 256 characters"
    )
    dataset: DatasetSpec
    trial: TrialSpec
    sampling_algorithm: SamplingAlgorithm = Field(default_factory=SamplingAlgorithm)
    search_space: dict[str, Distribution] = Field(min_length=1, max_length=MAX_SEARCH_SPACE)
    early_termination: EarlyTermination | None = None
    limits: Limits = Field(default_factory=Limits)
    objective: Objective = Field(default_factory=default_objective)
    compute: ComputeSpec = Field(default_factory=default_section)
    output: OutputSpec = Field(default_factory=OutputSpec)
    warm_start: WarmStart | None = Field(default=None, description="seed the search with a finished experiment's")

    @model_validator(mode="before")
    @classmethod
    def _bounded_numbers(cls, data: Any) -> Any:
        """Before anything reads a number: refuse huge integers and non-finite floats, wherever they are."""
        problems = Problems()
        numbers_problems(data, problems)
        problems.fail()
        return data

    @field_validator("sampling_algorithm", mode="before")
    @classmethod
    def _sampling_string(cls, value: Any) -> Any:
        return {"type": value.lower()} if isinstance(value, str) else value

    @field_validator("compute", mode="before")
    @classmethod
    def _compute_backend(cls, value: Any) -> Any:
        if isinstance(value, dict) and "backend" not in value:
            return {"backend": DEFAULT_BACKEND, **value}
        return value

    @field_validator("search_space")
    @classmethod
    def _search_space(cls, space: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        trial: TrialSpec | None = info.data.get("trial")
        sampling: SamplingAlgorithm | None = info.data.get("sampling_algorithm")
        problems = Problems()
        checked = dict(space)
        if trial is not None:
            table = HYPERPARAMETERS[trial.model]
            for name, dist in space.items():
                hp = table.get(name)
                if hp is None:
                    problems.add(
                        (name,),
                        f"{trial.model} has no hyperparameter {echo(name)}{did_you_mean(name, table)}; "
                        f"expected one of: {', '.join(table)}",
                    )
                elif name in trial.params:
                    problems.add(
                        (name,),
                        f"{name} is both fixed in trial.params ({trial.params[name]!r}) and searched here: "
                        "remove one of them",
                    )
                else:
                    checked[name] = check_distribution(name, dist, hp, problems)
        if sampling is not None and sampling.type in SAMPLING_TYPES:
            allowed = SAMPLING_TYPES[sampling.type]
            for name, dist in space.items():
                if dist.type not in allowed:
                    problems.add(
                        (name, "type"),
                        f"{sampling.type} sampling supports only {', '.join(sorted(allowed))} "
                        f"distributions (AzureML's rule), and {name} is {dist.type}"
                        + ("; use random sampling" if sampling.type == "bayesian" else ""),
                    )
        if sampling is not None and sampling.type == "grid" and not problems:
            points = _grid_size(checked)
            if points is not None and points > MAX_GRID_POINTS:
                problems.add((), f"the grid has {points:.3g} points; grid sampling allows at most {MAX_GRID_POINTS}")
        problems.fail()
        return checked

    @model_validator(mode="after")
    def _cross_sections(self) -> ExperimentSpec:
        compute = self.compute
        errors: list[Problem] = []
        runs_on = f"this spec runs on {compute.backend!r}"
        if azureml_uri_form(self.dataset.uri) is not None and not compute.reads_azureml_data:
            readers = _names(backends_where(lambda section: section.reads_azureml_data))
            errors.append(
                (
                    ("dataset", "uri"),
                    f"AzureML data (azureml:...) is read by AzureML itself: it needs compute.backend {readers} "
                    f"({runs_on}); give a storage URL instead",
                )
            )
        if self.output.register_model is not None and not compute.registers_models:
            registrars = _names(backends_where(lambda section: section.registers_models))
            errors.append(
                (
                    ("output", "register_model"),
                    f"registering the model needs the model registry of compute.backend {registrars} ({runs_on})",
                )
            )
        errors += self._objective_problems()
        errors += policy_problems(self)
        errors += compute.spec_problems(self)
        fail(errors)
        return self

    def _objective_problems(self) -> list[Problem]:
        """The metric must be one the task reports (when the task is known before reading the data: stated,
        or a built-in table's); a spec that names no objective gets the task's default metric. Bandit's
        ``slack_factor`` is a ratio: a metric that can be negative (r2) needs ``slack_amount``."""
        task = self.dataset.known_task()
        if task is not None and "objective" not in self.model_fields_set:
            self.objective = default_objective(task)
        errors: list[Problem] = []
        mismatch = None if task is None else metric_mismatch(self.objective.primary_metric, task)
        if mismatch is not None:
            errors.append((("objective", "primary_metric"), mismatch))
        errors += objectives_problems(self, task)
        policy = self.early_termination
        ratio = isinstance(policy, BanditPolicy) and policy.slack_factor is not None
        if ratio and self.objective.primary_metric not in POSITIVE_METRICS:
            errors.append(
                (
                    ("early_termination", "slack_factor"),
                    f"slack_factor is a ratio and {self.objective.primary_metric} can be negative: use slack_amount",
                )
            )
        return errors

    def to_document(self) -> dict[str, Any]:
        """The full normalized spec as a JSON-able dict; ``load_spec`` of it gives an equal spec."""
        document = self.model_dump(mode="json")
        document["search_space"] = {name: _type_first(d) for name, d in document["search_space"].items()}
        if document["early_termination"] is not None:
            document["early_termination"] = _type_first(document["early_termination"])
        return document

    def grid_size(self) -> int | None:
        """The number of distinct configurations when every entry is a ``choice``, else ``None``."""
        return _grid_size(self.search_space)

    def effective_total_trials(self) -> int:
        """``limits.max_total_trials``, capped at the grid size for grid sampling."""
        size = self.grid_size()
        if self.sampling_algorithm.type == "grid" and size is not None:
            return min(self.limits.max_total_trials, size)
        return self.limits.max_total_trials


def _grid_size(space: dict[str, Any]) -> int | None:
    choices = [dist for dist in space.values() if isinstance(dist, Choice)]
    if len(choices) != len(space):
        return None
    return math.prod(len(dist.values) for dist in choices)


def _type_first(entry: dict[str, Any]) -> dict[str, Any]:
    return {"type": entry["type"], **{k: v for k, v in entry.items() if k != "type"}}


def _names(backends: list[str]) -> str:
    return " or ".join(repr(name) for name in backends)
