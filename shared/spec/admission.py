"""Admission: the spec's rules that depend on the world now, checked once, at the edge (HTTP, the request
queue, the CLI), never on a stored spec.

The spec's own validators (:class:`~shared.spec.ExperimentSpec`) check its *shape*: types, ranges, the
search space against the model's hyperparameters, the cross-section rules. They run on every read,
stored records included, so they depend on nothing that changes under a running experiment. What does
change is checked here, when a spec is admitted:

* the size catalogue (:mod:`shared.cost.catalogue`): a VM size Azure retired is refused, naming its
  replacement; ``limits.max_cost`` needs a price for every billed node;
* the concurrency default (``limits.max_concurrent_trials`` left out: what keeps every GPU of the catalogued
  sizes busy) is written into the spec, so the stored spec never needs the catalogue again;
* the deployment's policy (:class:`~shared.spec.SpecPolicy`: hosted mode).

A size the catalogue retires mid-run therefore leaves the run's record readable and its steps going: the
retirement concerns new submissions only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.spec.errors import SpecError, format_loc
from shared.spec.experiment import ExperimentSpec
from shared.spec.policy import SpecPolicy

if TYPE_CHECKING:
    from shared.cost.catalogue import Catalogue


def admission_problems(spec: ExperimentSpec, catalogue: Catalogue) -> list[dict[str, str]]:
    """What the catalogue refuses in ``spec`` now: retired sizes (each field that names one) and a budget
    some billed node has no price for."""
    from shared.cost.estimate import budget_error

    errors = [
        {"loc": format_loc(("compute", field)), "msg": error}
        for field, size in spec.compute.vm_sizes().items()
        if (error := catalogue.check(size).error)
    ]
    if not errors and (error := budget_error(spec, catalogue)):
        errors.append({"loc": "limits.max_cost", "msg": error})
    return errors


def with_default_concurrency(spec: ExperimentSpec) -> ExperimentSpec:
    """Left out, ``limits.max_concurrent_trials`` is what keeps every GPU busy (GPUs x trials per GPU, at
    most the trial budget); ``idle_gpu_warnings`` warns when a given value leaves GPUs idle."""
    capacity = spec.compute.gpu_capacity()
    if capacity is None or "max_concurrent_trials" in spec.limits.model_fields_set:
        return spec
    concurrency = min(capacity.trials_at_once, spec.limits.max_total_trials)
    limits = spec.limits.model_copy(update={"max_concurrent_trials": concurrency})
    return spec.model_copy(update={"limits": limits})


def admit(spec: ExperimentSpec, policy: SpecPolicy | None = None, catalogue: Catalogue | None = None) -> ExperimentSpec:
    """``spec`` as admitted now: the concurrency default filled in, the catalogue's and ``policy``'s rules
    checked (:class:`SpecError` naming each field they refuse). Only the edge calls this."""
    from shared.cost.catalogue import load_catalogue

    spec = with_default_concurrency(spec)
    errors = admission_problems(spec, catalogue or load_catalogue())
    if errors:
        raise SpecError(errors)
    if policy is not None:
        policy.check(spec)
    return spec
