"""The Pareto front (:mod:`shared.pareto`) over the API: ``GET /api/experiments/{id}/pareto``, the front and the
best-model rule, and ``GET .../trials/{number}/model``, a kept front member's model by trial number."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, Response

from shared.api import ERRORS, Ctx, ExperimentId, Reader, _get, model_zip
from shared.auth import check_owner
from shared.config import MODEL_PREFIX, front_model_prefix
from shared.pareto import ParetoView, front_member, kept_members, member_model_problem, pareto_view, stored_members
from shared.records import ExperimentRecord
from shared.spec import ExperimentSpec

router = APIRouter(prefix="/api")
TrialNumber = Annotated[int, Path(ge=0, le=10**10 - 1, description="a trial's number, as /trials lists it")]


def _spec(record: ExperimentRecord) -> ExperimentSpec:
    if record.spec is None:  # a request refused at intake: no trial ever ran
        raise HTTPException(409, f"experiment {record.id!r} has no spec (refused at intake)")
    return record.spec


@router.get(
    "/experiments/{experiment_id}/pareto",
    response_model=ParetoView,
    responses=ERRORS,
    summary="The Pareto front over the spec's objectives, the constraints and the rule naming the best model",
    description=(
        "The completed trials that met every constraint and that no other such trial beats on every objective "
        "(`objective.primary_metric` and `objective.also`), best primary metric first; `best` marks the trial "
        "whose model is the experiment's best model (`best_rule`), and `model_uri` each member whose model is "
        "stored (the first `output.front_models`, once the run completed). With one objective the front is that "
        "trial."
    ),
)
def get_pareto(ctx: Ctx, caller: Reader, request: Request, experiment_id: ExperimentId) -> Any:
    record = _get(ctx, experiment_id, caller, request)
    trials = ctx.store.list_trials(experiment_id)
    return pareto_view(_spec(record), trials, experiment_id, stored_members(ctx.store, record, trials))


@router.get(
    "/experiments/{experiment_id}/trials/{number}/model",
    responses={
        **ERRORS,
        200: {"content": {"application/zip": {}}, "description": "the trial's model files"},
        404: {"description": "unknown experiment, a trial off the Pareto front, or one whose model was not kept"},
    },
    summary="A Pareto front member's model files as a zip archive, by trial number (streamed)",
    description=(
        "The best trial's is the best model (`GET .../model`); another front member's is its parameters refit "
        "on all rows after the run, kept for the first `output.front_models` members (`GET .../pareto`: "
        "`model_uri`). The same rule as `GET .../model`: its owner or an admin."
    ),
)
def download_member_model(
    ctx: Ctx, caller: Reader, request: Request, experiment_id: ExperimentId, number: TrialNumber
) -> Response:
    record = _get(ctx, experiment_id, caller, request)
    check_owner(caller, record, "downloading the model")
    spec = _spec(record)
    trials = ctx.store.list_trials(experiment_id)
    if record.best is not None and record.best.number == number:
        prefix = MODEL_PREFIX
    else:
        try:
            front_member(spec, trials, number)
        except LookupError as exc:
            raise HTTPException(404, f"{exc}: only a Pareto front member's model is kept") from None
        prefix = front_model_prefix(number)
    names = ctx.store.list_artifacts(experiment_id, prefix)
    if names and prefix != MODEL_PREFIX and (problem := member_model_problem(ctx.store, record, trials, number)):
        raise HTTPException(404, f"trial {number} of experiment {experiment_id!r} has no whole model: {problem}")
    if not names:
        kept = kept_members(spec, trials)
        raise HTTPException(
            404,
            f"trial {number} of experiment {experiment_id!r} has no stored model (status {record.status}): a run "
            f"keeps the first output.front_models={spec.output.front_models} front members' models {kept}, refit "
            "once it completed (none after a cancel, none past limits.max_cost)",
        )
    return model_zip(ctx, experiment_id, prefix, names, f"{experiment_id}-trial-{number}-model.zip")
