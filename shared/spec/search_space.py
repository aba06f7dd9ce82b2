"""Search-space distributions (AzureML's names) and their checks against a hyperparameter's range."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import Field, field_validator, model_validator

from gpu_jobs.params import HyperParameter
from shared.spec.bounds import MAX_CHOICE_VALUES, number_problem, q_problem
from shared.spec.errors import Loc, Problems, SpecModel, echo, fail

GRID_TYPES: frozenset[str] = frozenset({"choice"})
BAYESIAN_TYPES: frozenset[str] = frozenset({"choice", "uniform", "quniform"})
SAMPLING_TYPES: dict[str, frozenset[str]] = {"grid": GRID_TYPES, "bayesian": BAYESIAN_TYPES}
"""The distribution types each restricted sampling algorithm allows."""
MAX_EXPONENT = 700.0
"""Largest exponent a log distribution may reach: ``exp(700)`` is still a finite float."""


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


class Choice(SpecModel):
    """One of ``values`` (numbers: every hyperparameter here is numeric)."""

    type: Literal["choice"] = "choice"
    values: list[Any] = Field(min_length=1, max_length=MAX_CHOICE_VALUES)


class RandInt(SpecModel):
    """An integer in ``[0, upper)``."""

    type: Literal["randint"] = "randint"
    upper: int = Field(ge=1)

    def support(self) -> Support:
        return Support(0, self.upper - 1, bounded=True)


class _Bounded(SpecModel):
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

    @model_validator(mode="after")
    def _q_steps(self) -> QUniform:
        _check_q(self.max_value - self.min_value, self.q, "max_value - min_value", "QUniform")
        return self

    def support(self) -> Support:
        return Support(quantize(self.min_value, self.q), quantize(self.max_value, self.q), bounded=True)


def _check_q(span: float, q: float, what: str, title: str, reach: float | None = None) -> None:
    """Refuse (at ``q``) a ``q`` that splits ``span`` into more than ``MAX_Q_STEPS`` points, or for which
    the farthest value (``reach``) divided by ``q`` is not a finite number (the sampler rounds it)."""
    problem = q_problem(span, q, what)
    if problem is None and reach is not None and not math.isfinite(reach / q):
        problem = f"q={q:g} is too fine for values as far as {reach:g} from 0"
    if problem is not None:
        fail([(("q",), problem)], title)


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

    @model_validator(mode="after")
    def _q_steps(self) -> QLogUniform:
        span = safe_exp(self.max_value) - safe_exp(self.min_value)
        _check_q(span, self.q, "exp(max_value) - exp(min_value)", "QLogUniform")
        return self

    def support(self) -> Support:
        low, high = math.exp(self.min_value), math.exp(self.max_value)
        return Support(quantize(low, self.q), quantize(high, self.q), bounded=True)


class _Gaussian(SpecModel):
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

    @model_validator(mode="after")
    def _q_steps(self) -> QNormal:
        _check_q(16 * self.sigma, self.q, "mu ± 8 sigma", "QNormal", reach=abs(self.mu) + 8 * self.sigma)
        return self

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

    @model_validator(mode="after")
    def _q_steps(self) -> QLogNormal:
        _check_q(safe_exp(self.mu + 8 * self.sigma), self.q, "0 to exp(mu + 8 sigma)", "QLogNormal")
        return self

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


def check_value(value: Any, hp: HyperParameter) -> float | int:
    """``value`` coerced to ``hp``'s type; ``ValueError`` naming the problem (never ``OverflowError``:
    the number is checked to be finite and within ``MAX_INTEGER`` before the range is)."""
    problem = number_problem(value)
    if problem is not None:
        raise ValueError(f"{hp.name} {problem}")
    return hp.check(value)


def check_distribution(name: str, dist: Any, hp: HyperParameter, problems: Problems) -> Any:
    """Check one entry against its hyperparameter, adding to ``problems``; return it (choice values
    coerced). Linear in the number of values: duplicates are found through a set."""
    where = f"{hp.name}'s range ({hp.describe_range()})"
    if isinstance(dist, Choice):
        coerced: list[float | int] = []
        seen: set[float | int] = set()
        before = len(problems.found) + problems.more
        for i, value in enumerate(dist.values):
            try:
                checked = check_value(value, hp)
            except ValueError as exc:
                problems.add((name, "values", i), str(exc))
                continue
            if checked in seen:
                problems.add((name, "values", i), f"duplicate value {echo(value)}: choice values must differ")
            seen.add(checked)
            coerced.append(checked)
        clean = len(problems.found) + problems.more == before
        return dist.model_copy(update={"values": coerced}) if clean else dist

    errors: list[tuple[Loc, str]] = []

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
    for loc, msg in errors:
        problems.add(loc, msg)
    return dist
