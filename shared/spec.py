"""The experiment spec: one YAML or JSON document in AzureML's sweep-job vocabulary.

The same document runs on a local Dask cluster, on Azure VMs or as an AzureML sweep job, so its sections
use AzureML's names (``search_space``, ``sampling_algorithm``, ``early_termination``, ``limits``,
``objective``) and their semantics. Every model forbids unknown keys: a typo is an error, never a silently
ignored setting.

Search-space semantics (AzureML's, mapped to Optuna by :mod:`shared.hpo.search_space`):

- ``choice(values)``; ``randint(upper)``: integers in ``[0, upper)``;
- ``uniform(min_value, max_value)``; ``quniform``: ``round(uniform / q) * q``;
- ``loguniform(min_value, max_value)``: ``exp(uniform(min_value, max_value))``: **the bounds are
  exponents**, so values in ``[0.01, 0.3]`` are ``min_value: -4.6, max_value: -1.2``;
  ``qloguniform``: ``round(exp(uniform) / q) * q``;
- ``normal(mu, sigma)``, ``qnormal``; ``lognormal(mu, sigma)``: ``exp(normal(mu, sigma))``, ``qlognormal``.

Each name must be a hyperparameter of ``trial.model`` (``gpu_jobs.params``) that is not also fixed in
``trial.params``. Values are checked against the hyperparameter's valid range: every ``choice`` value, and
the whole achievable range of a bounded distribution (after q-rounding), so ``max_features:
uniform(0.2, 1.5)`` is rejected. Unbounded distributions (``normal``, ``lognormal`` and their q-forms)
are **clipped** to the valid range when sampled; one that can cross an *exclusive* lower bound (e.g.
``normal`` for ``learning_rate``, which must be > 0) is rejected because no clipped value would be valid.
For an integer hyperparameter every sampled value is **rounded to the nearest integer** (Python's
``round``), so ``uniform(1, 20)`` for ``max_depth`` is allowed and yields integers.

Sampling rules (AzureML's): ``grid`` needs only ``choice`` distributions; ``bayesian`` allows only
``choice``, ``uniform`` and ``quniform``. AzureML's bayesian sampling does not support early termination:
our local and VM engines allow the combination, the ``azureml`` backend rejects it. ``seed`` is honoured
by every algorithm here; on AzureML only random sampling takes a seed.

``limits.max_total_trials`` larger than a grid's size is capped at the grid size
(:meth:`ExperimentSpec.effective_total_trials`).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Hashable, Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from gpu_jobs.params import HYPERPARAMETERS, METRICS, HyperParameter, ModelName
from shared.compute_spec import ComputeSpec, LocalCompute

BUILTIN_DATASETS: tuple[str, ...] = ("nycflights13",)
"""Datasets bundled with the project, addressed as ``builtin://<name>``."""
URI_SCHEMES: tuple[str, ...] = ("builtin", "file", "abfs", "abfss", "az", "https", "http")
"""Schemes a dataset URI may use; a URI without a scheme is a local path."""
GRID_TYPES: frozenset[str] = frozenset({"choice"})
BAYESIAN_TYPES: frozenset[str] = frozenset({"choice", "uniform", "quniform"})
_SAMPLING_TYPES: dict[str, frozenset[str]] = {"grid": GRID_TYPES, "bayesian": BAYESIAN_TYPES}
MAX_EXPONENT = 700.0
"""Largest exponent a log distribution may reach: ``exp(700)`` is still a finite float."""

Loc = tuple[str | int, ...]


# ------------------------------------------------------------------------------------------- errors
class SpecError(ValueError):
    """An invalid spec. ``errors`` lists ``{"loc": "search_space.max_depth.values[2]", "msg": "..."}``."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        lines = [f"{e['loc']}: {e['msg']}" if e["loc"] else e["msg"] for e in errors]
        super().__init__("invalid experiment spec:\n  " + "\n  ".join(lines))

    @classmethod
    def single(cls, msg: str, loc: str = "") -> SpecError:
        return cls([{"loc": loc, "msg": msg}])

    @classmethod
    def from_validation_error(cls, exc: ValidationError, document: Any) -> SpecError:
        """Translate pydantic's errors: dotted locations without union tags, messages without prefixes."""
        errors: list[dict[str, str]] = []
        for error in exc.errors(include_url=False):
            loc = format_loc(_strip_tags(tuple(error["loc"]), document))
            msg = str(error["msg"])
            for prefix in ("Value error, ", "Assertion failed, "):
                msg = msg.removeprefix(prefix)
            item = {"loc": loc, "msg": msg}
            if item not in errors:
                errors.append(item)
        return cls(errors)


def format_loc(loc: Iterable[str | int]) -> str:
    """``("search_space", "max_depth", "values", 2)`` -> ``"search_space.max_depth.values[2]"``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_UNION_TAGS: frozenset[str] = frozenset(
    {
        "choice",
        "randint",
        "uniform",
        "quniform",
        "loguniform",
        "qloguniform",
        "normal",
        "qnormal",
        "lognormal",
        "qlognormal",
        "bandit",
        "median_stopping",
        "truncation_selection",
        "local",
        "vmcluster",
        "azureml",
    }
)


def _strip_tags(loc: Loc, document: Any) -> Loc:
    """Drop the union tags pydantic inserts (``search_space.x.choice.values``), guided by the input."""
    out: list[str | int] = []
    node = document
    for part in loc:
        if isinstance(node, dict):
            if part in node:
                node = node[part]
            elif isinstance(part, str) and part in _UNION_TAGS:
                continue
            else:
                node = None
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
        out.append(part)
    return tuple(out)


def _fail(errors: Sequence[tuple[Loc, str]], title: str = "ExperimentSpec") -> None:
    """Raise the errors as one ``ValidationError`` with precise locations (relative to the caller)."""
    if errors:
        raise ValidationError.from_exception_data(
            title,
            [
                InitErrorDetails(type=PydanticCustomError("spec", "{msg}", {"msg": msg}), loc=loc, input=None)
                for loc, msg in errors
            ],
        )


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _SpecModel(BaseModel):
    """Base of the spec's models: unknown keys are errors that name the valid ones."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            fields = list(cls.model_fields)
            _fail(
                [
                    (
                        (key,),
                        f"unknown field {key!r}{_did_you_mean(str(key), fields)}; expected one of: {', '.join(fields)}",
                    )
                    for key in data
                    if key not in cls.model_fields
                ],
                cls.__name__,
            )
        return data


# ------------------------------------------------------------------------------------ search space
def quantize(value: float, q: float) -> float:
    """AzureML's q-rounding ``round(value / q) * q``, without float noise (``3 * 0.1`` gives ``0.3``)."""
    exponent = Decimal(repr(float(q))).as_tuple().exponent
    decimals = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    return round(round(value / q) * q, decimals)


def safe_exp(x: float) -> float:
    return math.exp(x) if x <= MAX_EXPONENT else math.inf


class Support(NamedTuple):
    """The values a distribution can yield: ``[low, high]`` when ``bounded``; else clipped when sampled."""

    low: float
    high: float
    bounded: bool
    low_attained: bool = True


class Choice(_SpecModel):
    """One of ``values`` (numbers: every hyperparameter here is numeric)."""

    type: Literal["choice"] = "choice"
    values: list[Any] = Field(min_length=1)


class RandInt(_SpecModel):
    """An integer in ``[0, upper)``."""

    type: Literal["randint"] = "randint"
    upper: int = Field(ge=1)

    def support(self) -> Support:
        return Support(0, self.upper - 1, bounded=True)


class _Bounded(_SpecModel):
    min_value: float
    max_value: float

    @model_validator(mode="after")
    def _ordered(self) -> _Bounded:
        if not self.min_value < self.max_value:
            raise ValueError(f"min_value ({self.min_value:g}) must be less than max_value ({self.max_value:g})")
        return self


class Uniform(_Bounded):
    """``uniform(min_value, max_value)``."""

    type: Literal["uniform"] = "uniform"

    def support(self) -> Support:
        return Support(self.min_value, self.max_value, bounded=True)


class QUniform(_Bounded):
    """``round(uniform(min_value, max_value) / q) * q``."""

    type: Literal["quniform"] = "quniform"
    q: float = Field(gt=0)

    def support(self) -> Support:
        return Support(quantize(self.min_value, self.q), quantize(self.max_value, self.q), bounded=True)


class _LogBounded(_Bounded):
    @field_validator("max_value")
    @classmethod
    def _finite_exp(cls, value: float) -> float:
        if value > MAX_EXPONENT:
            raise ValueError(
                f"max_value is an exponent (values are exp(max_value)); {value:g} overflows: "
                f"use at most {MAX_EXPONENT:g}"
            )
        return value


class LogUniform(_LogBounded):
    """``exp(uniform(min_value, max_value))``: the bounds are exponents (AzureML)."""

    type: Literal["loguniform"] = "loguniform"

    def support(self) -> Support:
        return Support(math.exp(self.min_value), math.exp(self.max_value), bounded=True)


class QLogUniform(_LogBounded):
    """``round(exp(uniform(min_value, max_value)) / q) * q``."""

    type: Literal["qloguniform"] = "qloguniform"
    q: float = Field(gt=0)

    def support(self) -> Support:
        low, high = math.exp(self.min_value), math.exp(self.max_value)
        return Support(quantize(low, self.q), quantize(high, self.q), bounded=True)


class _Gaussian(_SpecModel):
    mu: float
    sigma: float = Field(gt=0)


class Normal(_Gaussian):
    """``normal(mu, sigma)``; clipped to the hyperparameter's range when sampled."""

    type: Literal["normal"] = "normal"

    def support(self) -> Support:
        return Support(-math.inf, math.inf, bounded=False)


class QNormal(_Gaussian):
    """``round(normal(mu, sigma) / q) * q``."""

    type: Literal["qnormal"] = "qnormal"
    q: float = Field(gt=0)

    def support(self) -> Support:
        return Support(-math.inf, math.inf, bounded=False)


class _LogGaussian(_Gaussian):
    @model_validator(mode="after")
    def _finite_exp(self) -> _LogGaussian:
        if self.mu + 8 * self.sigma > MAX_EXPONENT:
            raise ValueError(
                f"values are exp(normal(mu, sigma)); mu + 8*sigma = {self.mu + 8 * self.sigma:g} "
                f"overflows: keep it at most {MAX_EXPONENT:g}"
            )
        return self


class LogNormal(_LogGaussian):
    """``exp(normal(mu, sigma))``; always > 0, clipped to the hyperparameter's range when sampled."""

    type: Literal["lognormal"] = "lognormal"

    def support(self) -> Support:
        return Support(0.0, math.inf, bounded=False, low_attained=False)


class QLogNormal(_LogGaussian):
    """``round(exp(normal(mu, sigma)) / q) * q``; can be 0."""

    type: Literal["qlognormal"] = "qlognormal"
    q: float = Field(gt=0)

    def support(self) -> Support:
        return Support(0.0, math.inf, bounded=False, low_attained=True)


Distribution = Annotated[
    Choice | RandInt | Uniform | QUniform | LogUniform | QLogUniform | Normal | QNormal | LogNormal | QLogNormal,
    Field(discriminator="type"),
]
"""One search-space entry, discriminated on ``type`` (AzureML's names)."""


def finish_value(value: float, hp: HyperParameter) -> float | int:
    """Round an AzureML draw for an integer hyperparameter and clip it to the valid range.

    Bounded distributions never need the clip (the spec checked their range); unbounded ones do.
    """
    if hp.kind == "int":
        low = math.ceil(hp.low) if hp.low_inclusive else math.floor(hp.low) + 1
        high = math.inf if math.isinf(hp.high) else math.floor(hp.high)
        return int(min(max(round(value), low), high))
    return float(min(max(value, hp.low), hp.high))


def _in_range(value: float, hp: HyperParameter) -> bool:
    above = value >= hp.low if hp.low_inclusive else value > hp.low
    return above and value <= hp.high


def _check_distribution(name: str, dist: Any, hp: HyperParameter) -> tuple[Any, list[tuple[Loc, str]]]:
    """Check one entry against its hyperparameter; return it (choice values coerced) and the errors."""
    errors: list[tuple[Loc, str]] = []
    where = f"{hp.name}'s range ({hp.describe_range()})"
    if isinstance(dist, Choice):
        coerced: list[float | int] = []
        for i, value in enumerate(dist.values):
            try:
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"{hp.name} must be a finite number, got {value!r}")
                checked = hp.check(value)
            except ValueError as exc:
                errors.append(((name, "values", i), str(exc)))
                continue
            if checked in coerced:
                errors.append(((name, "values", i), f"duplicate value {value!r}: choice values must differ"))
            coerced.append(checked)
        return (dist.model_copy(update={"values": coerced}) if not errors else dist), errors

    support = dist.support()
    low, high = support.low, support.high
    rounded = ""
    if hp.kind == "int":
        low = round(low) if math.isfinite(low) else low
        high = round(high) if math.isfinite(high) else high
        rounded = ", rounded to integers,"
    if support.bounded:
        hint = ""
        if isinstance(dist, (LogUniform, QLogUniform)):
            hint = (
                "; loguniform bounds are exponents (AzureML): values run from exp(min_value) to "
                "exp(max_value), so for values in [a, b] use min_value: ln(a), max_value: ln(b)"
            )
        ends: tuple[tuple[float, str, Loc], ...] = (
            (low, "down to", (name,) if isinstance(dist, RandInt) else (name, "min_value")),
            (high, "up to", (name, "upper") if isinstance(dist, RandInt) else (name, "max_value")),
        )
        for value, side, field_loc in ends:
            if not _in_range(value, hp):
                errors.append(
                    (
                        field_loc,
                        f"{dist.type}{rounded} yields values {side} {value:g}, outside {where}{hint}",
                    )
                )
    elif not hp.low_inclusive and (low < hp.low or (low == hp.low and support.low_attained)):
        errors.append(
            (
                (name, "type"),
                f"{dist.type} can yield values <= {hp.low:g}, and {hp.name} must be > {hp.low:g}: "
                f"unbounded distributions are clipped to {where}, which cannot reach an excluded bound; "
                "use a bounded distribution" + (" or lognormal" if isinstance(dist, (Normal, QNormal)) else ""),
            )
        )
    return dist, errors


# ---------------------------------------------------------------------------------------- sections
class DatasetSpec(_SpecModel):
    """Where the table is and which column is the binary target."""

    uri: str = Field(
        min_length=1,
        description="builtin://nycflights13, a local path, file://, abfs(s)://, az:// or http(s):// URL",
    )
    target: str = Field(min_length=1, description="the 0/1 (two-class) target column")
    format: Literal["csv", "parquet"] | None = Field(default=None, description="None: from the extension")
    max_rows: int | None = Field(
        default=None, gt=0, description="keep a seeded random sample of this many rows (quick runs)"
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, uri: str) -> str:
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
                f"unknown builtin dataset {rest!r}: expected one of "
                + ", ".join(f"builtin://{name}" for name in BUILTIN_DATASETS)
            )
        return uri


class TrialSpec(_SpecModel):
    """What one trial trains: the model, its fixed hyperparameters, CV folds and engine."""

    model: ModelName
    cv_folds: int = Field(default=5, ge=2, le=20)
    params: dict[str, Any] = Field(
        default_factory=dict, description="fixed hyperparameters (gpu_jobs.params names and ranges)"
    )
    engine: Literal["auto", "gpu", "cpu"] = "auto"

    @model_validator(mode="after")
    def _params(self) -> TrialSpec:
        table = HYPERPARAMETERS[self.model]
        errors: list[tuple[Loc, str]] = []
        checked: dict[str, float | int] = {}
        for name, value in self.params.items():
            hp = table.get(name)
            if hp is None:
                errors.append(
                    (
                        ("params", name),
                        f"{self.model} has no hyperparameter {name!r}{_did_you_mean(name, table)}; "
                        f"expected one of: {', '.join(table)}",
                    )
                )
                continue
            try:
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"{name} must be a finite number, got {value!r}")
                checked[name] = hp.check(value)
            except ValueError as exc:
                errors.append((("params", name), str(exc)))
        _fail(errors, "TrialSpec")
        self.params = checked
        return self


class SamplingAlgorithm(_SpecModel):
    """How trials are picked. ``rule: sobol`` (random only) draws a scrambled Sobol sequence."""

    type: Literal["random", "grid", "bayesian"] = "random"
    seed: int | None = Field(default=None, ge=0, lt=2**32, description="None: not reproducible")
    rule: Literal["random", "sobol"] | None = None

    @model_validator(mode="after")
    def _rule(self) -> SamplingAlgorithm:
        if self.rule is not None and self.type != "random":
            _fail([(("rule",), f"rule applies to random sampling only, not {self.type}")])
        return self


class _Policy(_SpecModel):
    evaluation_interval: int = Field(default=1, ge=1, description="apply at every multiple of this step")
    delay_evaluation: int = Field(default=0, ge=0, description="first step the policy may apply at")


class BanditPolicy(_Policy):
    """Stop a trial whose best value is not within the slack of the best trial at that step."""

    type: Literal["bandit"] = "bandit"
    slack_factor: float | None = Field(default=None, gt=0)
    slack_amount: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_slack(self) -> BanditPolicy:
        if (self.slack_factor is None) == (self.slack_amount is None):
            raise ValueError("bandit needs exactly one of slack_factor or slack_amount")
        return self


class MedianStoppingPolicy(_Policy):
    """Stop a trial whose best value is worse than the median of the others' running averages."""

    type: Literal["median_stopping"] = "median_stopping"


class TruncationSelectionPolicy(_Policy):
    """At each evaluation step, stop the trials in the lowest ``truncation_percentage`` percent."""

    type: Literal["truncation_selection"] = "truncation_selection"
    truncation_percentage: int = Field(ge=1, le=99)


EarlyTermination = Annotated[
    BanditPolicy | MedianStoppingPolicy | TruncationSelectionPolicy, Field(discriminator="type")
]


class Limits(_SpecModel):
    """Budget: trials, concurrency and time (seconds)."""

    max_total_trials: int = Field(default=20, ge=1, le=1000)
    max_concurrent_trials: int = Field(default=2, ge=1, le=1000)
    timeout: int | None = Field(default=None, gt=0, description="seconds for the whole experiment")
    trial_timeout: int | None = Field(default=None, gt=0, description="seconds for one trial")

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
        _fail(errors, "Limits")
        return self


class Objective(_SpecModel):
    """The metric trials are ranked by. ``goal`` defaults to the metric's natural direction."""

    primary_metric: str = "accuracy"
    goal: Literal["maximize", "minimize"]

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: Any) -> Any:
        """Accept AzureML's capitalized spellings (``Accuracy``, ``Maximize``); default the goal."""
        if isinstance(data, dict):
            data = dict(data)
            metric = data.get("primary_metric", "accuracy")
            if isinstance(metric, str):
                data["primary_metric"] = metric = metric.lower()
            if isinstance(data.get("goal"), str):
                data["goal"] = data["goal"].lower()
            elif data.get("goal") is None:
                data["goal"] = METRICS.get(metric, "maximize") if isinstance(metric, str) else "maximize"
        return data

    @field_validator("primary_metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}: expected one of: {', '.join(METRICS)}")
        return metric

    @model_validator(mode="after")
    def _direction(self) -> Objective:
        natural = METRICS[self.primary_metric]
        if self.goal != natural:
            better = "higher" if natural == "maximize" else "lower"
            _fail(
                [
                    (
                        ("goal",),
                        f"{self.primary_metric} must be {natural}d ({better} is better); "
                        f"goal {self.goal} would pick the worst trial as the best",
                    )
                ],
                "Objective",
            )
        return self


def _default_objective() -> Objective:
    return Objective(primary_metric="accuracy", goal="maximize")


# ---------------------------------------------------------------------------------------- the spec
class ExperimentSpec(_SpecModel):
    """A whole experiment. Build it with :func:`load_spec` to get :class:`SpecError` on bad input."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    dataset: DatasetSpec
    trial: TrialSpec
    sampling_algorithm: SamplingAlgorithm = Field(default_factory=SamplingAlgorithm)
    search_space: dict[str, Distribution] = Field(min_length=1)
    early_termination: EarlyTermination | None = None
    limits: Limits = Field(default_factory=Limits)
    objective: Objective = Field(default_factory=_default_objective)
    compute: ComputeSpec = Field(default_factory=LocalCompute)

    @field_validator("sampling_algorithm", mode="before")
    @classmethod
    def _sampling_string(cls, value: Any) -> Any:
        return {"type": value.lower()} if isinstance(value, str) else value

    @field_validator("compute", mode="before")
    @classmethod
    def _compute_backend(cls, value: Any) -> Any:
        if isinstance(value, dict) and "backend" not in value:
            return {"backend": "local", **value}
        return value

    @field_validator("search_space")
    @classmethod
    def _search_space(cls, space: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        trial: TrialSpec | None = info.data.get("trial")
        sampling: SamplingAlgorithm | None = info.data.get("sampling_algorithm")
        errors: list[tuple[Loc, str]] = []
        checked = dict(space)
        if trial is not None:
            table = HYPERPARAMETERS[trial.model]
            for name, dist in space.items():
                hp = table.get(name)
                if hp is None:
                    errors.append(
                        (
                            (name,),
                            f"{trial.model} has no hyperparameter {name!r}{_did_you_mean(name, table)}; "
                            f"expected one of: {', '.join(table)}",
                        )
                    )
                elif name in trial.params:
                    errors.append(
                        (
                            (name,),
                            f"{name} is both fixed in trial.params ({trial.params[name]!r}) and searched "
                            "here: remove one of them",
                        )
                    )
                else:
                    checked[name], dist_errors = _check_distribution(name, dist, hp)
                    errors.extend(dist_errors)
        if sampling is not None and sampling.type in _SAMPLING_TYPES:
            allowed = _SAMPLING_TYPES[sampling.type]
            for name, dist in space.items():
                if dist.type not in allowed:
                    errors.append(
                        (
                            (name, "type"),
                            f"{sampling.type} sampling supports only {', '.join(sorted(allowed))} "
                            f"distributions (AzureML's rule), and {name} is {dist.type}"
                            + ("; use random sampling" if sampling.type == "bayesian" else ""),
                        )
                    )
        _fail(errors)
        return checked

    @model_validator(mode="after")
    def _cross_sections(self) -> ExperimentSpec:
        if (
            self.compute.backend == "azureml"
            and self.sampling_algorithm.type == "bayesian"
            and self.early_termination is not None
        ):
            _fail(
                [
                    (
                        ("early_termination",),
                        "AzureML's bayesian sampling does not support early termination: remove "
                        "early_termination or use random sampling (the local and vmcluster backends "
                        "allow it)",
                    )
                ]
            )
        return self

    def to_document(self) -> dict[str, Any]:
        """The full normalized spec as a JSON-able dict; ``load_spec`` of it gives an equal spec."""
        document = self.model_dump(mode="json")
        document["search_space"] = {name: _type_first(d) for name, d in document["search_space"].items()}
        if document["early_termination"] is not None:
            document["early_termination"] = _type_first(document["early_termination"])
        return document

    def grid_size(self) -> int | None:
        """The number of distinct configurations when every entry is a ``choice``, else ``None``."""
        if not all(isinstance(dist, Choice) for dist in self.search_space.values()):
            return None
        return math.prod(len(dist.values) for dist in self.search_space.values())  # type: ignore[union-attr]

    def effective_total_trials(self) -> int:
        """``limits.max_total_trials``, capped at the grid size for grid sampling."""
        size = self.grid_size()
        if self.sampling_algorithm.type == "grid" and size is not None:
            return min(self.limits.max_total_trials, size)
        return self.limits.max_total_trials


def _type_first(entry: dict[str, Any]) -> dict[str, Any]:
    return {"type": entry["type"], **{k: v for k, v in entry.items() if k != "type"}}


# ----------------------------------------------------------------------------------------- loading
class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads ``1e-3`` as a float (YAML 1.2, like JSON)."""


def _construct_mapping(loader: _YamlLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(None, None, "found an unhashable key", key_node.start_mark)
        if key in mapping:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=deep)  # type: ignore[no-untyped-call]
    return mapping


_YamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        raise SpecError.single(f"invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise SpecError.single(f"invalid YAML: {exc}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise SpecError.single(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:
        raise SpecError.single(f"invalid JSON: {exc}") from None


def _read_path(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError.single(f"cannot read spec file {str(path)!r}: {exc}") from None
    return _parse_json(text) if path.suffix.lower() == ".json" else _parse_yaml(text)


def _parse_text(text: str) -> Any:
    return _parse_json(text) if text.lstrip().startswith("{") else _parse_yaml(text)


def read_document(source: str | Path | bytes | dict[str, Any]) -> dict[str, Any]:
    """Parse ``source`` into a dict without validating it (see :func:`load_spec` for the forms)."""
    if isinstance(source, dict):
        document: Any = source
    elif isinstance(source, Path):
        document = _read_path(source)
    elif isinstance(source, bytes):
        try:
            document = _parse_text(source.decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            raise SpecError.single(f"the spec is not UTF-8 text: {exc}") from None
    elif isinstance(source, str):
        stripped = source.strip()
        one_line = "\n" not in stripped
        looks_like_file = stripped.lower().endswith((".yaml", ".yml", ".json"))
        if one_line and (looks_like_file or (stripped and ":" not in stripped and Path(stripped).is_file())):
            document = _read_path(Path(stripped))
        else:
            document = _parse_text(source)
    else:
        raise TypeError(f"load_spec takes a path, YAML/JSON text, bytes or a dict, not {type(source).__name__}")
    if not isinstance(document, dict):
        kind = "empty" if document is None else type(document).__name__
        raise SpecError.single(f"the spec must be a mapping (a YAML/JSON object), got {kind}")
    return document


def load_spec(source: str | Path | bytes | dict[str, Any]) -> ExperimentSpec:
    """Load and validate a spec from a ``.yaml``/``.yml``/``.json`` path, YAML or JSON text, or a dict.

    Raises :class:`SpecError` listing every problem found with its location.
    """
    document = read_document(source)
    try:
        return ExperimentSpec.model_validate(document)
    except ValidationError as exc:
        raise SpecError.from_validation_error(exc, document) from None
