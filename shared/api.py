"""The HTTP API (FastAPI), served by ``func.AsgiFunctionApp`` in Azure and by uvicorn locally.

Long work answers ``202 Accepted`` with ``Location`` and ``Retry-After``; the status resource answers
200 with the current status. Every error is a 4xx whose body names the field and the reason.

Handlers are plain ``def`` functions, so FastAPI runs their blocking store calls in its thread pool and
the event loop never waits on storage; only the body is read on the loop (:func:`spec_body`, bounded).
They reach the :class:`~shared.context.Context` through ``Depends`` (:data:`Ctx`, an async dependency:
no thread hop of its own). Experiment ids are
checked against :data:`~shared.config.EXPERIMENT_ID_PATTERN` on the path parameter: a malformed id is a
422 before any handler runs, and the OpenAPI document states the pattern. A body is a spec document
(:func:`shared.spec.read_document`), never a file name; hosted mode's rules apply
(:class:`shared.spec.SpecPolicy`). Before any route, the web edge (:mod:`shared.api_guard`) refuses a
foreign ``Host``, a cross-origin state change, a body that is no JSON or YAML document and, with a
``function_key`` (``rapids-hpo serve``), a request without that key.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from shared import __version__
from shared.api_edge import ErrorBody, error_response, install_error_handlers
from shared.api_guard import EdgeGuard, EdgePolicy
from shared.auth import (
    AuthSettings,
    Principal,
    Role,
    check_owner,
    check_visible,
    install_auth,
    require,
    settings_of,
    visible_page,
)
from shared.backends.outcome import read_data_check
from shared.compute_report import ComputeReport
from shared.config import EXPERIMENT_ID_PATTERN, MODEL_PREFIX, Settings
from shared.context import Context, built_context, get_context
from shared.dashboard.docs import router as docs_router
from shared.dashboard.routes import router as dashboard_router
from shared.errors import CorruptRecord, InvalidPageToken, NotFound
from shared.handlers import IdempotencyConflict, request_cancel, reserved_key_problem, submit_experiment
from shared.records import (
    TERMINAL_STATUSES,
    BestTrial,
    CostLedger,
    DataCheckReport,
    ExperimentRecord,
    ExperimentStatus,
    RegisteredModel,
    SubmittedBy,
    Transition,
    TrialRecord,
    UnreadableRecord,
    updated,
)
from shared.spec import MAX_DOCUMENT_BYTES, DocumentError, SpecError, SpecPolicy, read_document, validate_spec
from shared.store import MAX_PAGE_TOKEN_CHARS
from shared.zipstream import zip_stream

MAX_BODY_BYTES = MAX_DOCUMENT_BYTES
"""Largest request body: the spec document's own limit."""
RETRY_AFTER_SECONDS = 10
KEY_LOC = "header.idempotency-key"
"""Where errors about the ``Idempotency-Key`` header point (FastAPI's own name for the header field)."""


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


class CostView(BaseModel):
    """The cost ledger's summary: USD spent so far, the budget (``limits.max_cost``), and the price basis
    (``estimate: ...`` when a local run is priced as its equivalent Azure size)."""

    spent_usd: float
    budget_usd: float | None
    basis: str

    @classmethod
    def of(cls, cost: CostLedger | None) -> CostView | None:
        return (
            None
            if cost is None
            else cls(spent_usd=round(cost.spent_usd, 4), budget_usd=cost.budget_usd, basis=cost.basis)
        )


class ExperimentView(BaseModel):
    """What the API shows of an experiment."""

    id: str
    name: str
    status: ExperimentStatus
    backend: str
    progress: Progress
    best: BestTrial | None
    metric: str = Field(description="the objective's primary metric: what `best.value` measures")
    error: str | None
    no_model: str | None = Field(
        default=None, description="why an ended experiment has no model (a cancel before any trial finished...)"
    )
    timings: Timings
    links: dict[str, str]
    history: list[Transition] = Field(default_factory=list)
    events: EventsView | None = None
    cost: CostView | None = Field(default=None, description="spend so far in USD; absent when the run is unpriced")
    registered_model: RegisteredModel | None = Field(
        default=None, description="the best model in the AzureML registry (output.register_model)"
    )
    compute: ComputeReport = Field(
        default_factory=ComputeReport, description="what the compute went through: restarts, evictions, heartbeat"
    )
    submitted_by: SubmittedBy | None = Field(default=None, description="who submitted it, as authenticated")
    data_check: DataCheckReport | None = Field(
        default=None,
        description="what the data check learned before any trial (the task and why, classes, rows, features); "
        "in GET /experiments/{id} only, once it passed. One that failed ended the experiment FAILED: `error` "
        "says why, beginning 'data check failed'",
    )

    @classmethod
    def of(cls, record: ExperimentRecord, data_check: DataCheckReport | None = None) -> ExperimentView:
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
            metric=record.objective[0],
            error=record.error,
            no_model=record.no_model,
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
            cost=CostView.of(record.cost),
            registered_model=record.registered_model,
            compute=record.compute,
            submitted_by=record.submitted_by,
            data_check=data_check,
        )


class UnreadableView(BaseModel):
    """A stored record that does not validate: listed by id and why, so the rest of the page still serves."""

    id: str
    reason: str


class ExperimentPage(BaseModel):
    items: list[ExperimentView]
    next_page_token: str | None
    unreadable: list[UnreadableView] = Field(
        default_factory=list, description="records on this page that could not be read (skipped, not fatal)"
    )

    @classmethod
    def of(cls, page: list[ExperimentRecord | UnreadableRecord], token: str | None) -> ExperimentPage:
        items = [ExperimentView.of(r) for r in page if isinstance(r, ExperimentRecord)]
        bad = [UnreadableView(id=r.id, reason=r.reason) for r in page if isinstance(r, UnreadableRecord)]
        return cls(items=items, next_page_token=token, unreadable=bad)


async def api_context() -> Context:
    """The process-wide context, returned on the event loop once built (a plain ``def`` dependency costs
    every request a hop to the thread pool); the first request builds it there (imports, SDK clients)."""
    context = built_context()
    return context if context is not None else await run_in_threadpool(get_context)


Ctx = Annotated[Context, Depends(api_context)]
"""The context, through ``Depends``; ``create_api(context=...)`` overrides it app-wide."""
ExperimentId = Annotated[
    str,
    Path(
        pattern=EXPERIMENT_ID_PATTERN,
        max_length=64,
        description="an experiment id as the API returned it, e.g. exp-20261201082600-a1b2c3",
    ),
]


class BodyTooLarge(HTTPException):
    """413, naming the ``body``."""

    loc = "body"

    def __init__(self, size: str) -> None:
        super().__init__(413, f"the body is {size} bytes; the limit is {MAX_BODY_BYTES}")


async def spec_body(request: Request) -> bytes:
    """The request body, read on the event loop and refused (413) past :data:`MAX_BODY_BYTES`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyTooLarge(declared)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BodyTooLarge(f"over {MAX_BODY_BYTES}")
    return bytes(body)


def _get(ctx: Context, experiment_id: str, caller: Principal, request: Request) -> ExperimentRecord:
    """The experiment, if it exists and the caller may see it (else 404, the same answer)."""
    try:
        record = ctx.store.get_experiment(experiment_id)
    except NotFound:
        raise HTTPException(404, f"experiment {experiment_id!r} not found") from None
    except CorruptRecord as exc:  # the store's fault, not the caller's: a 500 naming it, never a 4xx
        raise HTTPException(500, str(exc)) from None
    return check_visible(caller, settings_of(request), record)


Submitter = Annotated[Principal, require(Role.SUBMIT, "submitting an experiment")]
Canceller = Annotated[Principal, require(Role.SUBMIT, "cancelling an experiment")]
Reader = Annotated[Principal, require(Role.READ, "reading experiments")]


router = APIRouter(prefix="/api")
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no valid credential (WWW-Authenticate says why)"},
    403: {"model": ErrorBody, "description": "the caller lacks the app role (named) or ownership"},
    404: {"model": ErrorBody, "description": "unknown experiment, or one the caller may not see"},
}


@router.post(
    "/experiments",
    status_code=202,
    response_model=ExperimentView,
    responses={
        413: {"model": ErrorBody, "description": "body too large"},
        422: {"model": ErrorBody, "description": "unreadable document or invalid spec; `errors` names each field"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "an experiment spec document (never a file name)",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/yaml": {"schema": {"type": "string"}},
            },
        }
    },
    summary="Submit an experiment spec (JSON or YAML)",
)
def create_experiment(
    ctx: Ctx,
    caller: Submitter,
    body: Annotated[bytes, Depends(spec_body)],
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
) -> Any:
    reserved = reserved_key_problem(idempotency_key)
    if reserved:
        return error_response(422, f"invalid Idempotency-Key: {reserved}", [{"loc": KEY_LOC, "msg": reserved}])
    try:
        spec = validate_spec(read_document(body), SpecPolicy.from_settings(ctx.settings))
    except DocumentError as exc:
        msg = exc.errors[0]["msg"]
        return error_response(exc.status, msg, [{"loc": "body", "msg": msg}])
    except SpecError as exc:
        more = f" ({len(exc.errors)} shown, {exc.more} more)" if exc.more else ""
        return error_response(422, f"invalid experiment spec{more}", exc.errors)
    settings = settings_of(request)

    def may_read(record: ExperimentRecord) -> bool:  # warm_start: as GET /experiments/{id} would let them
        try:
            check_visible(caller, settings, record)
        except HTTPException:
            return False
        return True

    try:
        record, created = submit_experiment(
            ctx, spec, idempotency_key=idempotency_key, submitted_by=caller.identity, may_read=may_read
        )
    except IdempotencyConflict as exc:
        return error_response(422, f"Idempotency-Key reused: {exc}", [{"loc": KEY_LOC, "msg": str(exc)}])
    except SpecError as exc:
        return error_response(422, "invalid experiment spec", exc.errors)
    response.headers["Location"] = f"/api/experiments/{record.id}"
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return ExperimentView.of(record)


@router.get("/experiments", response_model=ExperimentPage, summary="List experiments, newest first")
def list_experiments(
    ctx: Ctx,
    caller: Reader,
    request: Request,
    status: ExperimentStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    page_token: Annotated[str | None, Query(max_length=MAX_PAGE_TOKEN_CHARS)] = None,
) -> Any:
    try:
        records, token = visible_page(
            ctx.store, caller, settings_of(request), status=status, limit=limit, page_token=page_token
        )
    except InvalidPageToken as exc:  # the caller's token; a stored record that fails is not the caller's fault
        return error_response(422, f"invalid page_token: {exc}", [{"loc": "query.page_token", "msg": str(exc)}])
    return ExperimentPage.of(records, token)


@router.get(
    "/experiments/{experiment_id}",
    response_model=ExperimentView,
    responses=ERRORS,
    summary="An experiment's status, progress, best trial so far, timings and error",
)
def get_experiment(ctx: Ctx, caller: Reader, request: Request, experiment_id: ExperimentId, response: Response) -> Any:
    record = _get(ctx, experiment_id, caller, request)
    if record.status not in TERMINAL_STATUSES:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return ExperimentView.of(record, read_data_check(ctx.store, experiment_id))


TRIALS_PAGE = 100
"""Trials per ``GET /trials`` page unless the caller asks for another size (at most 1000)."""


@router.get(
    "/experiments/{experiment_id}/trials",
    response_model=list[TrialRecord],
    responses=ERRORS,
    summary="Trials by number, a page at a time: parameters, state, values, metrics, duration, engine",
    description=(
        "Trials numbered above `after`, at most `limit`. When more follow, the `Link` header names the next "
        'page (`rel="next"`) and `X-Next-After` its `after`. Each trial\'s per-fold detail (`folds`) comes '
        "with `folds=true`."
    ),
)
def list_trials(
    ctx: Ctx,
    caller: Reader,
    request: Request,
    experiment_id: ExperimentId,
    response: Response,
    after: Annotated[int, Query(ge=-1, le=10**10)] = -1,
    limit: Annotated[int, Query(ge=1, le=1000)] = TRIALS_PAGE,
    folds: bool = False,
) -> Any:
    _get(ctx, experiment_id, caller, request)
    page = ctx.store.list_trials(experiment_id, after=after, limit=limit + 1)
    if len(page) > limit:
        page = page[:limit]
        following = page[-1].number
        response.headers["X-Next-After"] = str(following)
        next_url = f"/api/experiments/{experiment_id}/trials?after={following}&limit={limit}"
        response.headers["Link"] = f'<{next_url}{"&folds=true" if folds else ""}>; rel="next"'
    return page if folds else [updated(trial, folds=[]) for trial in page]


@router.get(
    "/experiments/{experiment_id}/model",
    responses={**ERRORS, 200: {"content": {"application/zip": {}}, "description": "the model's files"}},
    summary="The best model's files as a zip archive (streamed: no size limit held in memory)",
)
def download_model(ctx: Ctx, caller: Reader, request: Request, experiment_id: ExperimentId) -> Response:
    record = _get(ctx, experiment_id, caller, request)
    check_owner(caller, record, "downloading the model")
    names = ctx.store.list_artifacts(experiment_id, MODEL_PREFIX)
    if not names:
        why = f": {record.no_model}" if record.no_model else " yet"
        raise HTTPException(404, f"experiment {experiment_id!r} has no model{why} (status {record.status})")
    return model_zip(ctx, experiment_id, MODEL_PREFIX, names, f"{experiment_id}-model.zip")


def model_zip(ctx: Context, experiment_id: str, prefix: str, names: list[str], filename: str) -> Response:
    """The artifacts ``names`` (all under ``prefix``) as a zip streamed from the store, named without it."""
    files = [(name.removeprefix(prefix), partial(ctx.store.artifact_chunks, experiment_id, name)) for name in names]
    return StreamingResponse(
        zip_stream(files),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.delete(
    "/experiments/{experiment_id}",
    status_code=202,
    response_model=ExperimentView,
    responses={**ERRORS, 409: {"model": ErrorBody, "description": "already finished"}},
    summary="Cancel: running trials stop, compute is torn down",
)
def cancel_experiment(
    ctx: Ctx, caller: Canceller, request: Request, experiment_id: ExperimentId, response: Response
) -> Any:
    record = _get(ctx, experiment_id, caller, request)
    check_owner(caller, record, "cancelling")
    if record.status in {ExperimentStatus.COMPLETED, ExperimentStatus.FAILED}:
        return error_response(409, f"experiment {experiment_id!r} already ended {record.status.value}")
    record = request_cancel(ctx, experiment_id)
    response.headers["Location"] = f"/api/experiments/{record.id}"
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return ExperimentView.of(record)


@router.head("/health", include_in_schema=False)  # the same status, no body (one operation in the OpenAPI document)
@router.get(
    "/health",
    responses={503: {"model": ErrorBody, "description": "the store is unreachable"}},
    summary="Liveness plus a round trip to the store (HEAD: the same status, no body)",
)
def health(ctx: Ctx, caller: Reader) -> Any:
    try:
        ctx.store.list_experiments(limit=1)
    except Exception as exc:
        return error_response(503, f"store unreachable: {type(exc).__name__}: {exc}")
    return {
        "status": "ok",
        "version": __version__,
        "storage": "azure" if ctx.settings.uses_azure_storage else "local",
    }


def create_api(
    *,
    context: Context | None = None,
    settings: Settings | None = None,
    function_key: str | None = None,
    bound_host: str | None = None,
    auth: AuthSettings | None = None,
) -> FastAPI:
    """The FastAPI app. OpenAPI at ``/api/openapi.json``, interactive docs at ``/api/docs``.

    ``context`` replaces the process-wide one; without it, ``settings`` are the process's (the web edge's
    hosts and hosted mode). Both are read from the environment once, by the edge that builds the app
    (``function_app.py``, ``rapids-hpo serve``), never here. ``function_key`` makes every request need that
    key; ``bound_host`` (``serve --host``) is trusted as a ``Host`` beside loopback and the settings' hosts;
    ``auth`` says how callers are identified (:mod:`shared.auth`; the edges pass ``AuthSettings.from_env()``,
    and an app built without it is in key mode, where the platform's key is the only check).
    """
    if context is not None:
        settings = context.settings
    elif settings is None:
        raise TypeError("create_api needs the context or the settings (read once, at the edge)")
    app = FastAPI(
        title="rapids-hpo-control",
        version=__version__,
        description="Run RAPIDS hyperparameter-optimization experiments on Azure GPUs.",
        openapi_url=None,  # the document and the docs: shared.dashboard.docs, behind the reader role
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.include_router(router)
    from shared.api_pareto import router as pareto_router  # it reads this module's dependencies

    app.include_router(pareto_router)
    app.include_router(dashboard_router)
    app.include_router(docs_router)
    install_error_handlers(app)
    install_auth(app, auth if auth is not None else AuthSettings())
    if context is not None:

        async def given() -> Context:
            return context

        app.dependency_overrides[api_context] = given
        app.dependency_overrides[get_context] = lambda: context  # the dashboard's routes
    app.add_middleware(EdgeGuard, policy=EdgePolicy.of(settings, bound_host=bound_host, key=function_key))
    return app
