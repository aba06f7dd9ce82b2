"""The Pareto front of an experiment with several objectives (``objective.also``), and the declared rule for
"the best model".

A trial is on the front when it COMPLETED, met every constraint (``feasible`` is not False) and no other
such trial is at least as good on every objective and better on one. The best model stays one trial:
the best primary metric among feasible completed trials, ties broken by the other objectives in order
(:func:`shared.records.best_of`), which is always a front member; any other front member's model is the
user's to choose: the run keeps the first ``output.front_models`` members' models (:func:`kept_members`:
the best's under ``model/``, the others refit under ``front-models/<number>/``), each downloadable by trial
number. Values are read from each trial's metrics (the task's scores and what it measured).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from shared.bounded import Params
from shared.config import FRONT_MODEL_PREFIX, MODEL_PREFIX, front_model_prefix
from shared.errors import NotFound
from shared.records import BestTrial, ExperimentRecord, TrialRecord, TrialState
from shared.spec import ExperimentSpec

if TYPE_CHECKING:
    from shared.ports import Store

BEST_RULE = (
    "the best model is the completed trial with the best objective.primary_metric among those that met every "
    "constraint (ties: the other objectives in order, then the lower trial number): always on the Pareto front"
)


class FrontMember(BaseModel):
    number: int
    values: dict[str, float] = Field(description="each objective's value, by metric")
    params: Params
    best: bool = Field(description="this trial's model is the experiment's best model (BEST_RULE)")
    model_uri: str | None = Field(
        default=None,
        description="where to download this member's model (the control plane's route), once the control plane "
        "stored it; none for a member past output.front_models, or before the run ended",
    )


class ParetoView(BaseModel):
    """``GET /api/experiments/{id}/pareto``."""

    objectives: list[dict[str, str]] = Field(description="metric and goal, the primary first")
    constraints: list[dict[str, Any]]
    best_rule: str = BEST_RULE
    front: list[FrontMember] = Field(description="the non-dominated feasible trials, by the primary metric")
    completed: int
    infeasible: int = Field(description="completed trials that broke a constraint (never on the front)")
    models_kept: int = Field(description="output.front_models: the first this many members' models are kept")


def objective_point(spec: ExperimentSpec, trial: TrialRecord) -> list[float] | None:
    """The trial's objective values (the primary first), or None if one is missing or not finite."""
    values = []
    for name in spec.objective.metrics:
        value = trial.value if name == spec.objective.primary_metric else trial.metrics.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        values.append(float(value))
    return values


def _dominates(a: list[float], b: list[float], signs: list[float]) -> bool:
    """Whether ``a`` is at least as good as ``b`` everywhere and better somewhere (values times ``signs``:
    lower is better)."""
    pairs = [(x * s, y * s) for x, y, s in zip(a, b, signs, strict=True)]
    return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def pareto_front(spec: ExperimentSpec, trials: Iterable[TrialRecord]) -> list[tuple[TrialRecord, list[float]]]:
    """The front members with their values, best primary metric first (ties: the lower number)."""
    signs = [-1.0 if goal == "maximize" else 1.0 for goal in spec.objective.directions]
    points = [
        (trial, point)
        for trial in trials
        if trial.state is TrialState.COMPLETED
        and trial.feasible is not False
        and (point := objective_point(spec, trial)) is not None
    ]
    front = [(t, p) for t, p in points if not any(_dominates(q, p, signs) for _, q in points)]
    return sorted(front, key=lambda member: ([v * s for v, s in zip(member[1], signs, strict=True)], member[0].number))


def kept_members(spec: ExperimentSpec, trials: Iterable[TrialRecord]) -> list[int]:
    """The trial numbers whose models a run keeps: the front's first ``output.front_models`` members, in the
    front's order (the best model first). The driver refits these, and ingestion takes a
    ``front-models/<number>/`` for no other."""
    return [trial.number for trial, _ in pareto_front(spec, trials)[: spec.output.front_models]]


def pareto_view(
    spec: ExperimentSpec, trials: list[TrialRecord], experiment_id: str, stored: Collection[int] = ()
) -> ParetoView:
    """The view; ``stored``: the members whose models the control plane holds (each gets its ``model_uri``)."""
    completed = [t for t in trials if t.state is TrialState.COMPLETED]
    front = pareto_front(spec, trials)
    metrics = spec.objective.metrics
    return ParetoView(
        objectives=[{"metric": m, "goal": g} for m, g in zip(metrics, spec.objective.directions, strict=True)],
        constraints=[c.model_dump(exclude_none=True) for c in spec.objective.constraints],
        front=[
            FrontMember(
                number=trial.number,
                values=dict(zip(metrics, point, strict=True)),
                params=trial.params,
                best=index == 0,
                model_uri=member_model_link(experiment_id, trial.number) if trial.number in stored else None,
            )
            for index, (trial, point) in enumerate(front)
        ],
        completed=len(completed),
        infeasible=sum(1 for t in completed if t.feasible is False),
        models_kept=spec.output.front_models,
    )


def member_model_link(experiment_id: str, number: int) -> str:
    return f"/api/experiments/{experiment_id}/trials/{number}/model"


MEMBER_METRICS_FILE = "metrics.json"
"""A refit model's ``metrics.json`` (``gpu_jobs.model_files.METRICS_FILE``; the control plane does not import
gpu_jobs): stored last, so its presence says every other file of the model is there."""
MAX_MEMBER_METRICS_BYTES = 256 * 1024
"""Largest member ``metrics.json`` the control plane reads (a real one is a few KiB; ingestion allows a model's
file up to 1 GiB)."""


def cross_validation_of(spec: ExperimentSpec, trial: BestTrial) -> dict[str, Any]:
    """The scores that chose ``trial``'s parameters, as its refit's ``metrics.json`` carries them."""
    return {
        "trial": trial.number,
        "primary_metric": spec.objective.primary_metric,
        "value": trial.value,
        "metrics": trial.metrics,
    }


def metrics_problem(spec: ExperimentSpec, member: BestTrial, body: bytes) -> str | None:
    """Why ``body``, a stored ``metrics.json``, does not attest ``member``'s whole model (None: it does): it
    must parse as a JSON object whose ``cross_validation`` is this member's scores. The driver (before it
    refits) and the control plane (before it serves) judge by this one rule."""
    try:
        document = json.loads(body)
    except ValueError:  # not JSON or not UTF-8: not a file the refit wrote whole
        return f"its {MEMBER_METRICS_FILE} is not JSON"
    expected = json.loads(json.dumps(cross_validation_of(spec, member)))  # as JSON gives it back
    if not isinstance(document, dict) or document.get("cross_validation") != expected:
        return f"its {MEMBER_METRICS_FILE} does not carry trial {member.number}'s cross-validated scores"
    return None


def member_model_problem(store: Store, record: ExperimentRecord, trials: list[TrialRecord], number: int) -> str:
    """Why the store holds no whole model of front member ``number`` under ``front-models/<number>/`` ("" when
    it does): its files must end with a ``metrics.json`` (ingestion takes one only when the compute wrote it
    after the member's other files) that :func:`metrics_problem` accepts. A refit cut short (the driver died,
    the compute was torn down) leaves files without one: not a model to serve."""
    if record.spec is None:
        return "the experiment has no spec"
    prefix = front_model_prefix(number)
    names = store.list_artifacts(record.id, prefix)
    if not names:
        return "no model files"
    if prefix + MEMBER_METRICS_FILE not in names:
        return f"its refit did not finish: {MEMBER_METRICS_FILE}, stored last, is missing"
    try:
        member = front_member(record.spec, trials, number)
        body = _read_capped(store, record.id, prefix + MEMBER_METRICS_FILE, MAX_MEMBER_METRICS_BYTES)
    except (LookupError, NotFound) as exc:
        return str(exc)
    if body is None:
        return f"its {MEMBER_METRICS_FILE} is over {MAX_MEMBER_METRICS_BYTES} bytes"
    return metrics_problem(record.spec, member, body) or ""


def _read_capped(store: Store, experiment_id: str, name: str, limit: int) -> bytes | None:
    """The artifact's bytes, or None once it passes ``limit`` (read no further)."""
    data = bytearray()
    for chunk in store.artifact_chunks(experiment_id, name):
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


def stored_members(store: Store, record: ExperimentRecord, trials: list[TrialRecord]) -> set[int]:
    """The trials whose models the control plane's store holds: the best (``model/``) and each
    ``front-models/<number>/`` that is a whole model (:func:`member_model_problem`)."""
    numbers = {
        int(number)
        for name in store.list_artifacts(record.id, FRONT_MODEL_PREFIX)
        if (number := name.removeprefix(FRONT_MODEL_PREFIX).split("/", 1)[0]).isdigit()
    }
    whole = {number for number in numbers if not member_model_problem(store, record, trials, number)}
    if record.best is not None and store.list_artifacts(record.id, MODEL_PREFIX):
        whole.add(record.best.number)
    return whole


def front_member(spec: ExperimentSpec, trials: list[TrialRecord], number: int) -> BestTrial:
    """Trial ``number`` as a model to refit, if it is on the front; else LookupError saying why it is not
    (unknown, not completed, infeasible, a value missing, or which member dominates it)."""
    by_number = {trial.number: trial for trial in trials}
    trial = by_number.get(number)
    if trial is None:
        raise LookupError(f"the experiment has no trial {number}")
    front = pareto_front(spec, trials)
    for member, _ in front:
        if member.number == number:
            return BestTrial(number=number, value=float(trial.value or 0.0), params=trial.params, metrics=trial.metrics)
    point = objective_point(spec, trial)
    if trial.state is not TrialState.COMPLETED:
        why = f"it ended {trial.state.value}"
    elif trial.feasible is False:
        why = "it broke a constraint"
    elif point is None:
        why = f"it has no finite value for every objective ({', '.join(spec.objective.metrics)})"
    else:
        signs = [-1.0 if goal == "maximize" else 1.0 for goal in spec.objective.directions]
        better = next(m.number for m, p in front if _dominates(p, point, signs))
        why = f"trial {better} is at least as good on every objective and better on one"
    raise LookupError(f"trial {number} is not on the Pareto front: {why}")
