"""The HTTP API (FastAPI), served by ``func.AsgiFunctionApp`` in Azure and by uvicorn locally.

Long work answers ``202 Accepted`` with ``Location`` and ``Retry-After``; the status resource answers
200 with the current status. Every error is a 4xx whose body names the field and the reason.
"""

from __future__ import annotations

import io
import zipfile
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from shared import __version__
from shared.config import MODEL_PREFIX
from shared.context import Context, get_context
from shared.dashboard.routes import router as dashboard_router
from shared.errors import NotFound
from shared.handlers import InvalidRequest, parse_document, request_cancel, submit_experiment
from shared.records import TERMINAL_STATUSES, BestTrial, ExperimentRecord, ExperimentStatus, TrialRecord
from shared.spec import SpecError, load_spec

MAX_BODY_BYTES = 1024 * 1024
RETRY_AFTER_SECONDS = 10


class Progress(BaseModel):
    done: int
    total: int


class Timings(BaseModel):
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    updated_at: datetime
    duration_s: float | None


class EventsView(BaseModel):
    """CloudEvents delivery for this experiment (all zero when no Event Grid topic is configured)."""

    sent: int
    pending: int = Field(description="staged, not yet accepted by the topic (re-sent by later steps and the sweep)")
    failures: int = Field(description="failed publish attempts, retries included")
    dropped: int = Field(description="refused by the topic or over the outbox cap")
    last_error: str | None


class ExperimentView(BaseModel):
    """What the API shows of an experiment."""

    id: str
    name: str
    status: ExperimentStatus
    backend: str
    progress: Progress
    best: BestTrial | None
    error: str | None
    timings: Timings
    links: dict[str, str]
    history: list[dict[str, Any]] = Field(default_factory=list)
    events: EventsView | None = None

    @classmethod
    def of(cls, record: ExperimentRecord) -> ExperimentView:
        end = record.ended_at
        duration = (end - record.started_at).total_seconds() if end and record.started_at else None
        base = f"/api/experiments/{record.id}"
        return cls(
            id=record.id,
            name=record.name,
            status=record.status,
            backend=record.backend,
            progress=Progress(done=record.trials_done, total=record.trials_total),
            best=record.best,
            error=record.error,
            timings=Timings(
                created_at=record.created_at,
                started_at=record.started_at,
                ended_at=end,
                updated_at=record.updated_at,
                duration_s=duration,
            ),
            links={"self": base, "trials": f"{base}/trials", "model": f"{base}/model"},
            history=record.history,
            events=EventsView(
                sent=record.event_log.sent,
                pending=len(record.event_log.pending),
                failures=record.event_log.failures,
                dropped=record.event_log.dropped,
                last_error=record.event_log.last_error,
            ),
        )


class ExperimentPage(BaseModel):
    items: list[ExperimentView]
    next_page_token: str | None


class ErrorItem(BaseModel):
    loc: str
    msg: str


class ErrorBody(BaseModel):
    detail: str
    errors: list[ErrorItem] = Field(default_factory=list)


def _error(status: int, detail: str, errors: list[dict[str, str]] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail, "errors": errors or []})


def _context() -> Context:
    return get_context()


def _get(ctx: Context, experiment_id: str) -> ExperimentRecord:
    try:
        return ctx.store.get_experiment(experiment_id)
    except NotFound:
        raise HTTPException(404, f"experiment {experiment_id!r} not found") from None


router = APIRouter(prefix="/api")
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "unknown experiment"},
}


@router.post(
    "/experiments",
    status_code=202,
    response_model=ExperimentView,
    responses={
        413: {"model": ErrorBody, "description": "body too large"},
        415: {"model": ErrorBody, "description": "not JSON or YAML"},
        422: {"model": ErrorBody, "description": "invalid spec; `errors` names each field"},
    },
    summary="Submit an experiment spec (JSON or YAML)",
)
async def create_experiment(
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
) -> Any:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return _error(413, f"the body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
    if not body.strip():
        return _error(
            422, "the body is empty: send an experiment spec as JSON or YAML", [{"loc": "body", "msg": "empty"}]
        )
    try:
        document = parse_document(body)
        spec = load_spec(document)
    except InvalidRequest as exc:
        return _error(422, str(exc), [{"loc": "body", "msg": str(exc)}])
    except SpecError as exc:
        return _error(422, "invalid experiment spec", exc.errors)
    ctx = _context()
    record, created = submit_experiment(ctx, spec, idempotency_key=idempotency_key)
    response.headers["Location"] = f"/api/experiments/{record.id}"
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return ExperimentView.of(record)


@router.get("/experiments", response_model=ExperimentPage, summary="List experiments, newest first")
def list_experiments(
    status: ExperimentStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    page_token: str | None = None,
) -> Any:
    ctx = _context()
    try:
        records, token = ctx.store.list_experiments(status=status, limit=limit, page_token=page_token)
    except ValueError as exc:
        return _error(422, f"invalid page_token: {exc}", [{"loc": "query.page_token", "msg": str(exc)}])
    return ExperimentPage(items=[ExperimentView.of(r) for r in records], next_page_token=token)


@router.get(
    "/experiments/{experiment_id}",
    response_model=ExperimentView,
    responses=ERRORS,
    summary="An experiment's status, progress, best trial so far, timings and error",
)
def get_experiment(experiment_id: str, response: Response) -> Any:
    record = _get(_context(), experiment_id)
    if record.status not in TERMINAL_STATUSES:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return ExperimentView.of(record)


@router.get(
    "/experiments/{experiment_id}/trials",
    response_model=list[TrialRecord],
    responses=ERRORS,
    summary="Every trial: parameters, state, per-fold values, metrics, duration, engine",
)
def list_trials(experiment_id: str) -> Any:
    ctx = _context()
    _get(ctx, experiment_id)
    return ctx.store.list_trials(experiment_id)


@router.get(
    "/experiments/{experiment_id}/model",
    responses={**ERRORS, 200: {"content": {"application/zip": {}}, "description": "the model's files"}},
    summary="The best model's files as a zip archive",
)
def download_model(experiment_id: str) -> Response:
    ctx = _context()
    record = _get(ctx, experiment_id)
    names = ctx.store.list_artifacts(experiment_id, MODEL_PREFIX)
    if not names:
        raise HTTPException(404, f"experiment {experiment_id!r} has no model yet (status {record.status})")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            archive.writestr(name.removeprefix(MODEL_PREFIX), ctx.store.get_artifact(experiment_id, name))
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{experiment_id}-model.zip"'},
    )


@router.delete(
    "/experiments/{experiment_id}",
    status_code=202,
    response_model=ExperimentView,
    responses={**ERRORS, 409: {"model": ErrorBody, "description": "already finished"}},
    summary="Cancel: running trials stop, compute is torn down",
)
def cancel_experiment(experiment_id: str, response: Response) -> Any:
    ctx = _context()
    record = _get(ctx, experiment_id)
    if record.status in {ExperimentStatus.COMPLETED, ExperimentStatus.FAILED}:
        return _error(409, f"experiment {experiment_id!r} already ended {record.status.value}")
    record = request_cancel(ctx, experiment_id)
    response.headers["Location"] = f"/api/experiments/{record.id}"
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return ExperimentView.of(record)


@router.get("/health", summary="Liveness plus a round trip to the store")
def health() -> Any:
    ctx = _context()
    try:
        ctx.store.list_experiments(limit=1)
    except Exception as exc:
        return _error(503, f"store unreachable: {type(exc).__name__}: {exc}")
    return {
        "status": "ok",
        "version": __version__,
        "storage": "azure" if ctx.settings.uses_azure_storage else "local",
    }


def create_api() -> FastAPI:
    """The FastAPI app. OpenAPI at ``/api/openapi.json``, interactive docs at ``/api/docs``."""
    app = FastAPI(
        title="rapids-hpo-control",
        version=__version__,
        description="Run RAPIDS hyperparameter-optimization experiments on Azure GPUs.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.include_router(router)
    app.include_router(dashboard_router)
    return app
