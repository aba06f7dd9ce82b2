"""``GET /api/experiments/{id}/pareto``: the Pareto front and the best-model rule (:mod:`shared.pareto`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request

from shared.api import ERRORS, Ctx, ExperimentId, Reader, _get
from shared.pareto import ParetoView, pareto_view

router = APIRouter(prefix="/api")


@router.get(
    "/experiments/{experiment_id}/pareto",
    response_model=ParetoView,
    responses=ERRORS,
    summary="The Pareto front over the spec's objectives, the constraints and the rule naming the best model",
    description=(
        "The completed trials that met every constraint and that no other such trial beats on every objective "
        "(`objective.primary_metric` and `objective.also`), best primary metric first; `best` marks the trial "
        "whose model is the experiment's best model (`best_rule`). With one objective the front is that trial."
    ),
)
def get_pareto(ctx: Ctx, caller: Reader, request: Request, experiment_id: ExperimentId) -> Any:
    record = _get(ctx, experiment_id, caller, request)
    if record.spec is None:  # a request refused at intake: no trial ever ran
        raise HTTPException(409, f"experiment {experiment_id!r} has no spec (refused at intake)")
    return pareto_view(record.spec, ctx.store.list_trials(experiment_id))
