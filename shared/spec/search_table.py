"""The one table of search policies: every sampler and early-termination policy, one entry each.

An entry says everything the rest of the code asks of a policy, so adding one is adding an entry:

* ``type``: the spec's ``type`` (a pruner's spec model is ``model``, validated like the others);
* ``azureml(section)``: AzureML's sweep object, or ``None``: the azureml backend refuses the spec with a 422
  naming the field and the backends that run it (:func:`azureml_problems`);
* ``first_stop(section, spec)``: the cost estimate's input, the first step at which the policy may stop a
  trial (``None``: never; a sampler stops none); :func:`first_stop_fraction` turns it into a share;
* ``problems(section, spec)``: the entry's rules on the rest of the spec (422s), if any;
* ``example``: a valid section (the README's reference and the completeness test build it).

The Optuna object our driver runs for each entry (local and vmcluster backends) is the engine's, built by
:mod:`shared.hpo.search_builders` (one builder per ``type``): the spec describes the policies and imports
nothing of the engine. AzureML's forms import azure-ai-ml when called, so the spec (and the Function App)
load neither. ``tests/test_search_table.py`` checks every entry is complete, has its builder, and that each
builds what it says.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import Field

from shared.spec.errors import SpecModel
from shared.spec.pruning import (
    BanditPolicy,
    HyperbandPolicy,
    MedianStoppingPolicy,
    PatientPolicy,
    SuccessiveHalvingPolicy,
    ThresholdPolicy,
    TruncationSelectionPolicy,
    WilcoxonPolicy,
    first_rung,
    row_percents,
    trial_steps,
    wrapped_of,
)

if TYPE_CHECKING:
    from shared.spec import ExperimentSpec

Problem = tuple[tuple[str, ...], str]


def _no_problems(section: Any, spec: ExperimentSpec) -> list[Problem]:
    return []


@dataclass(frozen=True)
class SearchEntry:
    """One sampler or early-termination policy (see the module's docstring)."""

    kind: Literal["sampler", "pruner"]
    type: str
    summary: str
    azureml: Callable[[Any], Any] | None
    first_stop: Callable[[Any, ExperimentSpec], int | None]
    example: dict[str, Any]
    model: builtins.type[SpecModel] | None = None
    """A pruner's spec model (samplers share ``SamplingAlgorithm``)."""
    problems: Callable[[Any, ExperimentSpec], list[Problem]] = _no_problems
    rules: tuple[str, ...] = ()
    """A sampler's values of ``sampling_algorithm.rule`` (the first is the default; none: no rule)."""
    needs: tuple[str, ...] = ()
    """Python modules the Optuna object needs on the compute beyond Optuna (the driver checks them first)."""
    multi_objective: bool = True
    """Whether the sampler optimizes several objectives (``objective.also``); else the spec is refused."""
    startup_trials: int | None = None
    """A model-based sampler's random trials before its model steers (Optuna's default; ``sampling_algorithm.
    startup_trials`` sets it); None: it has none to set."""

    @property
    def wraps(self) -> bool:
        """Whether the policy takes another as ``wrapped`` (wrappers never wrap wrappers)."""
        return self.model is not None and "wrapped" in self.model.model_fields


# --------------------------------------------------------------------------------------- pruners
def schedule_of(p: Any) -> dict[str, int]:
    return {"evaluation_interval": p.evaluation_interval, "delay_evaluation": p.delay_evaluation}


def _azureml_first_step(p: Any, spec: ExperimentSpec) -> int:
    step = max(p.delay_evaluation, p.evaluation_interval)
    return int(-(-step // p.evaluation_interval) * p.evaluation_interval)


def _bandit_azureml(p: BanditPolicy) -> Any:
    from azure.ai.ml.sweep import BanditPolicy as AzureBandit

    if p.slack_factor is not None:
        return AzureBandit(slack_factor=p.slack_factor, **schedule_of(p))
    return AzureBandit(slack_amount=p.slack_amount or 0.0, **schedule_of(p))


def _median_azureml(p: MedianStoppingPolicy) -> Any:
    from azure.ai.ml.sweep import MedianStoppingPolicy as AzureMedian

    return AzureMedian(**schedule_of(p))


def _truncation_azureml(p: TruncationSelectionPolicy) -> Any:
    from azure.ai.ml.sweep import TruncationSelectionPolicy as AzureTruncation

    return AzureTruncation(truncation_percentage=p.truncation_percentage, **schedule_of(p))


def _halving_first(p: SuccessiveHalvingPolicy, spec: ExperimentSpec) -> int:
    return int(first_rung(p, spec) * p.reduction_factor**p.min_early_stopping_rate)


def _wilcoxon_problems(p: WilcoxonPolicy, spec: ExperimentSpec) -> list[Problem]:
    if spec.trial.report_every is not None:
        why = "pairs per-fold scores, and with trial.report_every a step is rounds or trees of every fold at once"
        return [(("early_termination", "type"), f"wilcoxon {why}: remove report_every or use another policy")]
    folds = spec.trial.cv_folds
    if max(2, p.n_startup_steps) >= folds:
        why = f"compares at least max(2, n_startup_steps) = {max(2, p.n_startup_steps)} folds and a trial has {folds}"
        return [(("early_termination", "n_startup_steps"), f"wilcoxon would never stop a trial: it {why}")]
    return []


def _patient_first(p: PatientPolicy, spec: ExperimentSpec) -> int | None:
    own = p.patience + 2  # Optuna compares the best before the last patience + 1 steps with those
    inner = None if p.wrapped is None else pruner_entry(p.wrapped).first_stop(p.wrapped, spec)
    return None if p.wrapped is not None and inner is None else max(own, inner or 0)


def _threshold_first(p: ThresholdPolicy, spec: ExperimentSpec) -> int | None:
    own = max(1, p.n_warmup_steps)
    inner = None if p.wrapped is None else pruner_entry(p.wrapped).first_stop(p.wrapped, spec)
    return own if inner is None else min(own, inner)


def _rung_problems(first: Callable[[Any, ExperimentSpec], int | None], fields: str) -> Callable[..., list[Problem]]:
    """A policy whose first stop is not before a trial's last step would never stop a trial: a 422."""

    def problems(p: Any, spec: ExperimentSpec) -> list[Problem]:
        step, steps = first(p, spec), trial_steps(spec)
        if step is not None and step < steps:
            return []
        return [
            (
                ("early_termination", fields.split(maxsplit=1)[0]),
                f"{p.type} would never stop a trial: its first decision ({fields}) is at step {step} and a trial "
                f"reports {steps} steps (the last is never stopped)",
            )
        ]

    return problems


def _hyperband_problems(p: HyperbandPolicy, spec: ExperimentSpec) -> list[Problem]:
    problems = _rung_problems(first_rung, "min_resource")(p, spec)
    if p.max_resource is not None and p.max_resource < first_rung(p, spec):
        why = f"is below the first rung, step {first_rung(p, spec)} (min_resource, by default the first step reported)"
        problems.append((("early_termination", "max_resource"), f"max_resource {p.max_resource} {why}"))
    return problems


PRUNERS: dict[str, SearchEntry] = {
    entry.type: entry
    for entry in (
        SearchEntry("pruner", "bandit", "AzureML's Bandit: within a slack of the best trial at the step",
                    _bandit_azureml, _azureml_first_step,
                    {"type": "bandit", "slack_factor": 0.1, "delay_evaluation": 1}, BanditPolicy),
        SearchEntry("pruner", "median_stopping", "AzureML's median stopping: best value vs median running average",
                    _median_azureml, _azureml_first_step,
                    {"type": "median_stopping", "delay_evaluation": 1}, MedianStoppingPolicy),
        SearchEntry("pruner", "truncation_selection", "AzureML's truncation selection: the lowest percent stop",
                    _truncation_azureml, _azureml_first_step,
                    {"type": "truncation_selection", "truncation_percentage": 20}, TruncationSelectionPolicy),
        SearchEntry("pruner", "successive_halving", "asynchronous successive halving (ASHA), Optuna",
                    None, _halving_first,
                    {"type": "successive_halving", "min_resource": 1, "reduction_factor": 3}, SuccessiveHalvingPolicy,
                    _rung_problems(_halving_first, "min_resource * reduction_factor**min_early_stopping_rate")),
        SearchEntry("pruner", "hyperband", "Hyperband: successive-halving brackets, Optuna",
                    None, first_rung,
                    {"type": "hyperband", "min_resource": 1, "reduction_factor": 2}, HyperbandPolicy,
                    _hyperband_problems),
        SearchEntry("pruner", "wilcoxon", "Wilcoxon signed-rank test over the folds against the best trial, Optuna",
                    None, lambda p, spec: max(2, p.n_startup_steps),
                    {"type": "wilcoxon", "p_threshold": 0.1}, WilcoxonPolicy, _wilcoxon_problems),
        SearchEntry("pruner", "patient", "waits patience steps without improvement, then asks wrapped, Optuna",
                    None, _patient_first,
                    {"type": "patient", "patience": 1, "wrapped": {"type": "median_stopping"}}, PatientPolicy),
        SearchEntry("pruner", "threshold", "stops a trial outside [lower, upper], or that wrapped stops, Optuna",
                    None, _threshold_first,
                    {"type": "threshold", "lower": 0.6, "wrapped": {"type": "successive_halving"}}, ThresholdPolicy),
    )
}  # fmt: skip
"""``early_termination.type`` -> its entry."""


def _union(entries: list[SearchEntry]) -> Any:
    models = tuple(entry.model for entry in entries)
    return Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007 (a runtime tuple of models)


WrappedPolicy = _union([e for e in PRUNERS.values() if not e.wraps])
"""What a wrapper may wrap: any policy but a wrapper (so nesting stays one level deep)."""
if TYPE_CHECKING:
    EarlyTermination = Any  # the table's models, built at run time
else:
    EarlyTermination = _union(list(PRUNERS.values()))
    """The ``early_termination`` section: one of the table's models, by ``type``."""
for _entry in PRUNERS.values():
    if _entry.wraps:
        assert _entry.model is not None
        _entry.model.model_rebuild(_types_namespace={"WrappedPolicy": WrappedPolicy})


def pruner_entry(policy: Any) -> SearchEntry:
    return PRUNERS[policy.type]


def first_stop_fraction(spec: ExperimentSpec) -> float:
    """The share of a trial's work done before the policy can first stop it (1.0 without a policy, or one
    that cannot stop it before its last step, which the driver never stops): its steps, or with
    ``trial.fidelity: rows`` the rows refit on so far of all its steps' (11 + 33 of 11 + 33 + 100)."""
    policy, steps = spec.early_termination, trial_steps(spec)
    if policy is None:
        return 1.0
    step = pruner_entry(policy).first_stop(policy, spec)
    if step is None or step >= steps:
        return 1.0
    if spec.trial.fidelity == "rows":
        levels = row_percents(spec)
        return sum(level for level in levels if level <= step) / sum(levels)
    return step / steps


def policy_problems(spec: ExperimentSpec) -> list[Problem]:
    """The table's rules on ``spec`` (every backend): the entries' own, the wrapped one's included."""
    problems: list[Problem] = []
    if spec.objective.multi:
        for rule in STOP_RULES:
            if getattr(spec.limits, rule) is not None:
                why = "follows one metric, and objective.also asks for several (a Pareto front): stop by"
                problems.append((("limits", rule), f"limits.{rule} {why} max_total_trials, timeout or max_cost"))
    policy = spec.early_termination
    if policy is None:
        return problems
    problems += pruner_entry(policy).problems(policy, spec)
    inner = wrapped_of(policy)
    if inner is not None:
        problems += [(("early_termination", "wrapped", *loc[1:]), msg) for loc, msg in
                     pruner_entry(inner).problems(inner, spec)]  # fmt: skip
    return problems


STOP_RULES = ("target_value", "no_improvement_trials", "terminator")
"""``limits`` fields our driver stops a run by (:mod:`shared.hpo.stopping`) and AzureML's sweep has no form of."""


def azureml_problems(spec: ExperimentSpec, accepting: list[str]) -> list[Problem]:
    """What the azureml backend refuses: a sampler or policy without an AzureML form (``accepting``: the
    backends that run every entry)."""
    others = " or ".join(repr(name) for name in accepting)
    problems: list[Problem] = []
    sampler = spec.sampling_algorithm.type
    if SAMPLERS[sampler].azureml is None:
        offered = ", ".join(t for t, e in SAMPLERS.items() if e.azureml is not None)
        problems.append(
            (
                ("sampling_algorithm", "type"),
                f"AzureML has no {sampler} sampling (it offers {offered}): compute.backend {others} runs it",
            )
        )
    for rule in STOP_RULES:
        if getattr(spec.limits, rule) is not None:
            problems.append(
                (
                    ("limits", rule),
                    f"AzureML's sweep stops only at max_total_trials and timeout: limits.{rule} needs compute.backend "
                    f"{others}",
                )
            )
    policy = spec.early_termination
    if policy is not None and pruner_entry(policy).azureml is None:
        offered = ", ".join(t for t, e in PRUNERS.items() if e.azureml is not None)
        problems.append(
            (
                ("early_termination", "type"),
                f"AzureML has no {policy.type} policy (it offers {offered}): compute.backend {others} runs it",
            )
        )
    return problems


def azureml_policy(spec: ExperimentSpec) -> Any | None:
    """AzureML's early-termination policy for the spec (None: none); ValueError for one AzureML lacks."""
    policy = spec.early_termination
    if policy is None:
        return None
    form = pruner_entry(policy).azureml
    if form is None:
        raise ValueError(f"no AzureML form for early-termination policy {policy.type!r}")
    return form(policy)


# -------------------------------------------------------------------------------------- samplers
def _random_azureml(s: Any) -> Any:
    from azure.ai.ml.sweep import RandomSamplingAlgorithm

    return RandomSamplingAlgorithm(seed=s.seed, rule=s.rule)


def _grid_azureml(s: Any) -> Any:
    from azure.ai.ml.sweep import GridSamplingAlgorithm

    return GridSamplingAlgorithm()


def _bayesian_azureml(s: Any) -> Any:
    from azure.ai.ml.sweep import BayesianSamplingAlgorithm

    return BayesianSamplingAlgorithm()


def _never_stops(section: Any, spec: ExperimentSpec) -> int | None:
    return None


SAMPLERS: dict[str, SearchEntry] = {
    entry.type: entry
    for entry in (
        SearchEntry("sampler", "random", "uniform random draws (rule: sobol for a scrambled Sobol sequence)",
                    _random_azureml, _never_stops, {"type": "random", "seed": 1, "rule": "sobol"},
                    rules=("random", "sobol")),
        SearchEntry("sampler", "grid", "every combination of choice values, in a seeded order",
                    _grid_azureml, _never_stops, {"type": "grid", "seed": 1}),
        SearchEntry("sampler", "bayesian", "TPE (Optuna) here; AzureML's own Bayesian optimization on azureml",
                    _bayesian_azureml, _never_stops, {"type": "bayesian", "seed": 1}, startup_trials=10),
        SearchEntry("sampler", "tpe", "multivariate TPE over the joint space (interactions), Optuna",
                    None, _never_stops, {"type": "tpe", "seed": 1}, startup_trials=10),
        SearchEntry("sampler", "cmaes", "CMA-ES over the numeric hyperparameters (choices drawn at random), Optuna",
                    None, _never_stops, {"type": "cmaes", "seed": 1}, needs=("cmaes",),
                    multi_objective=False),
        SearchEntry("sampler", "gp", "Gaussian-process Bayesian optimization (log EI), Optuna; PyTorch on the compute",
                    None, _never_stops, {"type": "gp", "seed": 1}, needs=("torch",), startup_trials=10),
        SearchEntry("sampler", "qmc", "quasi-Monte Carlo: a scrambled Sobol (rule: sobol) or Halton sequence, Optuna",
                    None, _never_stops, {"type": "qmc", "seed": 1, "rule": "halton"},
                    rules=("sobol", "halton")),
        SearchEntry("sampler", "nsga2", "NSGA-II, a genetic algorithm for several objectives and constraints, Optuna",
                    None, _never_stops, {"type": "nsga2", "seed": 1}),
        SearchEntry("sampler", "nsga3", "NSGA-III, reference-point NSGA for three or more objectives, Optuna",
                    None, _never_stops, {"type": "nsga3", "seed": 1}),
    )
}  # fmt: skip
"""``sampling_algorithm.type`` -> its entry."""


def missing_modules(spec: ExperimentSpec) -> str | None:
    """Why the spec's sampler cannot run in this Python (a module it needs is not installed), or None."""
    import importlib.util

    entry = SAMPLERS[spec.sampling_algorithm.type]
    missing = [name for name in entry.needs if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (
        f"sampling_algorithm.type {entry.type} needs the Python package(s) {', '.join(missing)} where the driver "
        "runs (pip install them into the compute's image), or choose another sampler"
    )


def azureml_sampler(spec: ExperimentSpec) -> Any:
    """AzureML's sampling algorithm for the spec; ValueError for one AzureML lacks."""
    form = SAMPLERS[spec.sampling_algorithm.type].azureml
    if form is None:
        raise ValueError(f"no AzureML form for sampling algorithm {spec.sampling_algorithm.type!r}")
    return form(spec.sampling_algorithm)


def runs_where(spec: ExperimentSpec) -> list[str]:
    """For ``plan``: which backends run the spec's sampler and policy (AzureML only those it has a form of)."""
    from shared.backends import backends_where

    ours = backends_where(lambda section: section.runs_our_search)
    theirs = backends_where(lambda section: not section.runs_our_search)
    lines = []
    sections = [("sampling_algorithm", SAMPLERS[spec.sampling_algorithm.type])]
    if spec.early_termination is not None:
        sections.append(("early_termination", pruner_entry(spec.early_termination)))
    for field, entry in sections:
        where = ours + (theirs if entry.azureml is not None else [])
        lines.append(f"{field} {entry.type} ({entry.summary}): runs on {', '.join(where)}")
    return lines
